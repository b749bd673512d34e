"""The web console and REST API of the cloud (`winstar console`): app.py serves both, ops.py holds
the operations they share, api.py is the REST API, web.py the pages."""
