"""Domain errors. A ``WinstarError`` is a user's (or a peer's) mistake: it carries a one-line
message, is shown without a traceback, and is raised before anything is committed."""


class WinstarError(Exception):
    """A mistake in the input; the message is one line, fit to show to the user."""


class NotFound(WinstarError):
    pass


class Conflict(WinstarError):
    pass


class PermissionDenied(WinstarError):
    pass


class WrongRole(WinstarError):
    """A command meant for the other kind of node (cloud vs edge)."""


class InvalidData(WinstarError):
    """Data a type's schema refuses; ``fields``: the schema's messages by field (nested like the
    data), when it named fields (the console shows each beside its field)."""

    def __init__(self, message: str, fields: object = None) -> None:
        super().__init__(message)
        self.fields = fields


class PluginError(WinstarError):
    pass
