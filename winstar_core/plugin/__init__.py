"""The plugin marker: the one thing a plugin imports from the core to implement hooks."""

import pluggy

NAME = "winstar"
hookimpl = pluggy.HookimplMarker(NAME)
hookspec = pluggy.HookspecMarker(NAME)

__all__ = ["NAME", "hookimpl", "hookspec"]
