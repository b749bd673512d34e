"""An entity type's form, built from the description of its schema (``Ops.types()``), so that a
third-party plugin's type gets its create and edit pages without web code of its own.

- :func:`inputs` turns the field descriptions into :class:`Input` objects the templates draw:
  text/email/url inputs, integer/number inputs, checkboxes for booleans, selects for choices,
  a fieldset for a nested schema (its inputs named ``parent.child``), and a JSON textarea for
  what a form cannot spell (dicts, lists, untyped fields). What an input shows comes from the
  posted form (a refused post keeps what the user typed), else the entity's data (edit), else
  the field's default (create).
- :func:`parse` turns a posted form back into the ``data`` dict the type's schema loads. An
  empty input means "the default": it is left out (``None`` for a field that allows None, so
  that an edit can clear it). Numbers that do not parse are passed on as typed, so the schema
  words the error; JSON that does not parse is refused here (:class:`FormErrors`).
- :func:`field_errors` places the schema's messages (``InvalidData.fields``, nested like the
  data) on the inputs they concern, by dotted name; the rest are shown at the top of the form.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: the widget of each kind of field (``Ops.types()``'s ``kind``)
WIDGETS = {
    "string": "text",
    "email": "email",
    "url": "url",
    "integer": "integer",
    "number": "number",
    "boolean": "checkbox",
    "object": "json",
    "array": "json",
    "any": "json",
}
#: the value a checked checkbox posts
CHECKED = "on"


@dataclass
class Input:
    """One input of a generated form (or a fieldset of inputs, ``widget == "fieldset"``)."""

    name: str
    label: str
    widget: str
    required: bool = False
    choices: list[str] = field(default_factory=list)
    hint: str = ""
    value: str = ""
    checked: bool = False
    error: str | None = None
    children: list[Input] = field(default_factory=list)
    placeholder: str = ""

    @property
    def dom_id(self) -> str:
        return "f-" + self.name.replace(".", "-")


class FormErrors(Exception):
    """A posted form that cannot become data (JSON that does not parse): messages by input name."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


# -- schema → inputs --------------------------------------------------------------------------------
def inputs(
    fields: list[dict[str, Any]],
    *,
    data: Mapping[str, Any] | None = None,
    posted: Mapping[str, Any] | None = None,
    errors: Mapping[str, str] | None = None,
    prefix: str = "",
) -> list[Input]:
    """The inputs of ``fields`` (``Ops.types()[i]["fields"]``), showing ``posted`` (a refused
    form, by input name), else ``data`` (an entity's data), else each field's default."""
    errors = errors or {}
    out = []
    for f in fields:
        name = prefix + f["name"]
        label = f["name"].replace("_", " ")
        has = data is not None and f["name"] in data
        value = data.get(f["name"]) if data is not None else None
        if f.get("fields") is not None:
            nested = value if isinstance(value, Mapping) else None
            out.append(
                Input(
                    name,
                    label,
                    "fieldset",
                    required=bool(f.get("required")),
                    hint=hint(f),
                    error=errors.get(name),
                    children=inputs(
                        f["fields"],
                        data=nested if nested is not None else ({} if data is not None else None),
                        posted=posted,
                        errors=errors,
                        prefix=name + ".",
                    ),
                )
            )
            continue
        choices = [str(c) for c in f.get("choices") or []]
        widget = "select" if choices else WIDGETS.get(f.get("kind", "any"), "json")
        item = Input(name, label, widget, bool(f.get("required")), choices, hint(f), error=errors.get(name))
        item.placeholder = (
            {"object": "{}", "array": "[]"}.get(str(f.get("kind")), "") if widget == "json" else ""
        )
        if posted is not None:
            item.value = str(posted.get(name, ""))
            item.checked = posted.get(name) == CHECKED
        else:
            shown = value if has else (f.get("default") if data is None else None)
            item.value = show(shown, widget)
            item.checked = bool(shown) if widget == "checkbox" else False
        out.append(item)
    return out


def show(value: Any, widget: str) -> str:
    """A value as its input shows it."""
    if value is None:
        return ""
    if widget == "json":
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def hint(f: Mapping[str, Any]) -> str:
    """What a field wants, in a few words: its description, bounds and default."""
    parts = []
    if f.get("description"):
        parts.append(str(f["description"]))
    low, high = f.get("min_length"), f.get("max_length")
    if low is not None or high is not None:
        parts.append(_bounds(low, high, "characters"))
    low, high = f.get("min"), f.get("max")
    if low is not None or high is not None:
        parts.append(_bounds(low, high, ""))
    kind = f.get("kind")
    if kind in ("object", "array", "any") and f.get("fields") is None:
        parts.append("JSON " + {"object": "object", "array": "list"}.get(str(kind), "value"))
    if f.get("default") not in (None, "") and kind != "boolean":
        parts.append(f"default: {f['default']}")
    return " · ".join(p for p in parts if p)


def _bounds(low: Any, high: Any, unit: str) -> str:
    if unit and (high if high is not None else low) == 1:
        unit = unit.rstrip("s")
    unit = f" {unit}" if unit else ""
    if low is not None and high is not None:
        return f"{low}–{high}{unit}"
    if low is not None:
        return f"at least {low}{unit}"
    return f"at most {high}{unit}"


# -- posted form → data -----------------------------------------------------------------------------
def parse(fields: list[dict[str, Any]], posted: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The data a posted form (by input name) says; :class:`FormErrors` for JSON that does not
    parse."""
    data: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for f in fields:
        name = prefix + f["name"]
        if f.get("fields") is not None:
            try:
                nested = parse(f["fields"], posted, name + ".")
            except FormErrors as exc:
                errors.update(exc.errors)
                continue
            if nested:
                data[f["name"]] = nested
            continue
        kind = f.get("kind", "any")
        if kind == "boolean" and not f.get("choices"):
            data[f["name"]] = posted.get(name) == CHECKED
            continue
        raw = posted.get(name)
        text = raw.strip() if isinstance(raw, str) else ""
        if text == "":
            if f.get("allow_none") and isinstance(raw, str):
                data[f["name"]] = None
            continue
        if f.get("choices"):
            data[f["name"]] = _choice(text, f["choices"])
        elif kind == "integer":
            data[f["name"]] = _number(text, int)
        elif kind == "number":
            data[f["name"]] = _number(text, float)
        elif WIDGETS.get(kind, "json") == "json":
            try:
                data[f["name"]] = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as exc:
                errors[name] = f"Not valid JSON: {getattr(exc, 'msg', exc)}."
        else:
            data[f["name"]] = raw
    if errors:
        raise FormErrors(errors)
    return data


def _choice(text: str, choices: list[Any]) -> Any:
    """The choice whose text was posted, as the schema declares it (a choice may be a number)."""
    for c in choices:
        if str(c) == text:
            return c
    return text


def _number(text: str, kind: type) -> Any:
    """``text`` as a number, or as typed (the schema then says what is wrong with it)."""
    try:
        return kind(text)
    except ValueError:
        return text


# -- the schema's messages → the inputs ---------------------------------------------------------------
def field_errors(
    fields: list[dict[str, Any]], messages: Any, prefix: str = ""
) -> tuple[dict[str, str], list[str]]:
    """``InvalidData.fields`` as (a message per input name, the messages that concern no input)."""
    by_name: dict[str, str] = {}
    other: list[str] = []
    if not isinstance(messages, Mapping):
        if messages:
            other.append(_text(messages))
        return by_name, other
    known = {f["name"]: f for f in fields}
    for key, msgs in messages.items():
        f = known.get(str(key))
        if f is None:
            where = f"{prefix}{key}" if key != "_schema" else prefix.rstrip(".")
            other.append(f"{where}: {_text(msgs)}" if where else _text(msgs))
            continue
        name = prefix + f["name"]
        if f.get("fields") is not None and isinstance(msgs, Mapping):
            nested, rest = field_errors(f["fields"], msgs, name + ".")
            by_name.update(nested)
            other.extend(rest)
        else:
            by_name[name] = _text(msgs)
    return by_name, other


def _text(msgs: Any) -> str:
    """Every message string inside ``msgs`` (lists, dicts by key or index), in one line."""
    if isinstance(msgs, str):
        return msgs
    if isinstance(msgs, Mapping):
        return " ".join(
            f"{k}: {_text(v)}" if not isinstance(k, str) or k != "_schema" else _text(v)
            for k, v in msgs.items()
        )
    if isinstance(msgs, list | tuple):
        return " ".join(_text(m) for m in msgs)
    return str(msgs)
