"""Services: what a cloud node and an edge node can do, each change in one transaction."""
