"""Name rules: what a tenant, customer, role, edge or entity may be called, and how a name is
shortened to take an edge's suffix."""

from __future__ import annotations

from winstar_core.entity_types import shown, text_problem
from winstar_core.errors import WinstarError
from winstar_core.services.constants import MAX_NAME


def name_problem(name: str, what: str) -> str | None:
    """Why ``name`` cannot be stored as ``what``'s name ("a tenant"), in one line; None if it can."""
    if not name:
        return f"{what} needs a non-empty name"
    if "\x00" in name:
        return f"{what}'s name may not contain the NUL character"
    if text_problem(name):
        return f"{what}'s name is not valid UTF-8 text: {shown(name)}"
    if len(name) > MAX_NAME:
        return f"{what}'s name may be at most {MAX_NAME} characters, this one has {len(name)}"
    return None


def clean_name(raw: str, what: str) -> str:
    """``raw`` stripped, refused when empty or longer than :data:`MAX_NAME` (``what``: "a tenant")."""
    name = raw.strip()
    why = name_problem(name, what)
    if why:
        raise WinstarError(why)
    return name


def fit_name(name: str, suffix: str) -> str:
    """``name`` + ``suffix``, ``name`` shortened so that the whole stays within :data:`MAX_NAME`."""
    return name[: MAX_NAME - len(suffix)] + suffix
