pytest_plugins = ["winstar_core.testing"]
