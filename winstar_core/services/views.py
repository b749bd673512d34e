"""JSON in and out for the command line: entities and outbox events as JSON objects, times as ISO
text, and the ``--data`` argument read as a JSON object."""

from __future__ import annotations

from typing import Any

from winstar_core.errors import WinstarError
from winstar_core.store.models import Entity


def iso(ms: int | None) -> str | None:
    """Epoch milliseconds as ISO 8601 text in UTC (``...Z``); None stays None. Integer arithmetic
    (exact to the millisecond at any date, and a list of a thousand edges formats 2,000 of them)."""
    if ms is None:
        return None
    import time

    seconds, millis = divmod(int(ms), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def entity_json(entity: Entity) -> dict[str, Any]:
    """An entity as the CLI shows it."""
    return {
        "id": str(entity.id),
        "type": entity.type,
        "name": entity.name,
        "tenant_id": str(entity.tenant_id),
        "customer_id": str(entity.customer_id) if entity.customer_id else None,
        "version": entity.version,
        "data": entity.data,
        "created_time": iso(entity.created_time),
        "updated_time": iso(entity.updated_time),
    }


def event_json(ev: Any) -> dict[str, Any]:
    """An outbox row (``edge_event`` or ``cloud_event``) as the CLI shows it."""
    return {
        "seq": ev.seq,
        "created_time": iso(ev.created_time),
        "type": ev.type,
        "action": ev.action,
        "entity_id": str(ev.entity_id) if ev.entity_id else None,
        "status": ev.status.lower(),
        "delivered_time": iso(ev.delivered_time),
        "error": ev.error,
    }


def parse_json_data(raw: str | None) -> dict[str, Any] | None:
    """``--data``: a JSON object, ``@PATH`` to read it from a file, or ``-`` for standard input."""
    if raw is None:
        return None
    import sys

    if raw == "-":
        try:
            raw = sys.stdin.read()
        except UnicodeDecodeError as exc:
            raise WinstarError(f"--data -: standard input is not UTF-8 text ({exc.reason})") from None
    elif raw.startswith("@"):
        try:
            with open(raw[1:], encoding="utf-8") as fh:
                raw = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise WinstarError(
                f"--data {raw}: cannot read it ({getattr(exc, 'strerror', None) or exc})"
            ) from None
    value = load_json(raw, "--data")
    if not isinstance(value, dict):
        raise WinstarError("--data must be a JSON object")
    return value


def load_json(text: str, what: str, *, finite: bool = False) -> Any:
    """``text`` read as JSON; a one-line :class:`WinstarError` naming ``what`` (``--data``, the
    request body) for anything that is not. ``finite``: NaN and Infinity, which Python reads but
    JSON does not have (nor PostgreSQL's JSONB), are refused too."""
    import json

    try:
        return json.loads(text, parse_constant=_not_json if finite else None)
    except json.JSONDecodeError as exc:
        raise WinstarError(
            f"{what} is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise WinstarError(f"{what} nests too deeply to read") from None
    except ValueError as exc:  # an integer of thousands of digits, say, or NaN
        raise WinstarError(f"{what} cannot be read: {' '.join(str(exc).split())}") from None


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")
