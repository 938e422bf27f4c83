"""docs/reference.md, generated from the config models so that it cannot drift from them:
every message edgegw accepts, where it sits, and each field's type, default and meaning.

``python -m edgegw.sites.reference > docs/reference.md`` writes it (the sites file's models
are added there, which this package does not import); a test compares.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

HEADER = """# Configuration reference

Generated from the config models by `python -m edgegw.sites.reference` (do not edit by hand;
a test fails when this file and the models disagree). Every message and field edgegw accepts;
anything else is an error that names its path and line. The prose in
[config.md](config.md) says how each part behaves and where it differs from Envoy; the sites
file is in [sites.md](sites.md).
"""


def _messages(root: type[BaseModel]) -> list[tuple[type[BaseModel], str]]:
    """Each message reachable from ``root``, once, with the first path that reaches it."""
    out: dict[type[BaseModel], str] = {}

    def walk(t: Any, path: str) -> None:
        if isinstance(t, type) and issubclass(t, BaseModel):
            if t in out:
                return
            out[t] = path
            for name, f in t.model_fields.items():
                walk(f.annotation, f"{path}.{name}" if path else name)
            return
        for arg in typing.get_args(t):
            walk(arg, path)

    walk(root, "")
    return list(out.items())


def _type(t: Any) -> str:
    if isinstance(t, type) and issubclass(t, BaseModel):
        return f"[{t.__name__}](#{t.__name__.lower()})"
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return f"map of {_type(args[0])} to {_type(args[1])}"
    if origin is tuple:
        return "address (host, port)"
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if args:  # a union
        parts = [_type(a) for a in args if a is not type(None)]
        return " or ".join(dict.fromkeys(parts))
    names = {str: "string", bool: "boolean", int: "integer", float: "number", Any: "any"}
    if t in names:
        return names[t]
    name = getattr(t, "__name__", str(t))
    return {"Url": "URL", "IPv4Network": "address or range",
            "IPv6Network": "address or range"}.get(name, name)


def _kind(f: FieldInfo) -> str:
    for m in f.metadata:
        func = getattr(getattr(m, "func", None), "__name__", "")
        if func == "_duration":
            return "duration (`5s`, `0.25s`)"
        if func == "_bool":
            return "boolean"
    return _type(f.annotation)


def _default(f: FieldInfo) -> str:
    if f.is_required():
        return "required"
    value = f.default
    if value is PydanticUndefined or value is None:
        return ""
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, list | dict | str) and not value:
        return ""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return f"`{value[0]}:{value[1]}`"
    return f"`{value}`"


def _doc(obj: Any) -> str:
    text = (obj or "").strip().split("\n\n")[0]
    return " ".join(line.strip() for line in text.splitlines())


def render(roots: tuple[tuple[str, type[BaseModel]], ...]) -> str:
    lines = [HEADER]
    for title, root in roots:
        lines += [f"# {title}", ""]
        lines += _section(root)
    return "\n".join(lines)


def _section(root: type[BaseModel]) -> list[str]:
    lines: list[str] = []
    for cls, path in _messages(root):
        lines += [f"## {cls.__name__}", ""]
        if path:
            lines += [f"At `{path}`.", ""]
        doc = _doc(cls.__doc__)
        if doc:
            lines += [doc, ""]
        if not cls.model_fields:
            lines += ["No fields.", ""]
            continue
        lines += ["| field | type | default | meaning |", "|---|---|---|---|"]
        for name, f in cls.model_fields.items():
            meaning = _doc(f.description).replace("|", "\\|")
            lines.append(f"| `{name}` | {_kind(f)} | {_default(f)} | {meaning} |")
        lines.append("")
    return lines
