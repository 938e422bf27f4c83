"""Bootstrap loading: text → plain data (with origins) → typed model → cross checks.

``load_bootstrap`` is the one entry point; it either returns a ``Bootstrap`` that the runtime
can build from, or raises ``ConfigError`` carrying every problem found, each naming the config
path and, where known, the file and line.
"""

from __future__ import annotations

import difflib
import functools
from typing import Any

from pydantic import BaseModel, ValidationError

from .dynamic import XdsResources, expand
from .model import Bootstrap
from .model.base import Msg
from .source import ConfigError, Path, Source, load

__all__ = ["Bootstrap", "ConfigError", "load_bootstrap", "from_source", "dotted", "problem",
           "validation_problems"]


def dotted(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def problem(src: Source, path: Path, message: str,
            names: dict[Path, str] | None = None) -> str:
    where = src.where(path)
    shown = dotted(path)
    for prefix, name in (names or {}).items():
        if path[:len(prefix)] == prefix:
            rest = dotted(("x",) + path[len(prefix):])[1:]
            shown = name + rest
    return f"{shown}: {message}" + (f" ({where})" if where else "")


@functools.cache
def field_names(base: type[BaseModel]) -> frozenset[str]:
    """Every field name of ``base`` and its subclasses: what a misspelt name is held against."""
    names: set[str] = set()
    todo = [base]
    while todo:
        cls = todo.pop()
        names.update(cls.model_fields)
        todo += cls.__subclasses__()
    return frozenset(names)


def _close(name: str, known: frozenset[str]) -> str | None:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
    return close[0] if close else None


def message_of(err: dict[str, Any], model: type[BaseModel] = Msg,
               unknown: str = "is not supported by edgegw") -> str:
    """One pydantic error as a user reads it; a near-miss field name gets a suggestion."""
    kind = err["type"]
    loc = err["loc"]
    if kind == "extra_forbidden":
        name, known = str(loc[-1]), field_names(model)
        if name in known:  # (a suggestion would repeat the name)
            return f"field '{name}' {unknown} on this message (only on others)"
        close = _close(name, known)
        return f"field '{name}' {unknown}" + (f"; did you mean '{close}'?" if close else "")
    if kind == "missing":
        return f"required field '{loc[-1]}' is missing"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"'{err['input']}' is not supported by edgegw here (supported: {expected})"
    if kind == "string_type" and isinstance(err.get("input"), bool):
        return (f"expected a string, got the boolean {str(err['input']).lower()}: YAML (as "
                "Envoy reads it) takes y, n, yes, no, on, off, true and false unquoted as "
                "booleans; quote the value")
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def validation_problems(e: ValidationError, src: Source, model: type[BaseModel] = Msg,
                        unknown: str = "is not supported by edgegw",
                        names: dict[Path, str] | None = None) -> list[str]:
    """Each error once, pointing at its line. A misspelt required field is one mistake, not
    two: its 'missing' error goes when the unknown name beside it is the suggestion."""
    errors: list[dict[str, Any]] = [dict(err) for err in e.errors()]
    misspelt: set[Path] = set()
    for err in errors:
        if err["type"] == "extra_forbidden":
            close = _close(str(err["loc"][-1]), field_names(model))
            if close is not None:
                misspelt.add(clean_loc(err["loc"][:-1]) + (close,))
    return [problem(src, clean_loc(err["loc"]), message_of(err, model, unknown), names)
            for err in errors
            if not (err["type"] == "missing" and clean_loc(err["loc"]) in misspelt)]


def clean_loc(loc: tuple[Any, ...]) -> Path:
    """Drops pydantic's internal location parts (validator names, union members)."""
    return tuple(p for p in loc if isinstance(p, int)
                 or not str(p).startswith(("function-", "[", "type.googleapis.com/")))


def from_source(src: Source, xds: XdsResources | None = None) -> Bootstrap:
    """The checked model of ``src``, with the listeners and clusters a control plane sent
    (``xds``) where its dynamic_resources asks for them."""
    src, dynamic, names = expand(src, xds)
    names = {**src.names, **names}
    problems: list[str] = []
    try:
        boot = Bootstrap.model_validate(src.data)
    except ValidationError as e:
        raise ConfigError(validation_problems(e, src, names=names)) from None
    # Imported here: the checks read certificate and log-format modules that themselves
    # import the config model, so importing them with this package would be circular.
    from .checks import cross_check

    problems.extend(problem(src, path, msg, names) for path, msg in cross_check(boot))
    if problems:
        raise ConfigError(problems)
    boot._dynamic = dynamic
    boot._files_seen = src.files_seen
    boot._notes = src.notes
    boot._left_out = src.left_out
    boot._waiting = src.waiting
    return boot


def load_bootstrap(config_path: str | None, config_yaml: str | None = None) -> Bootstrap:
    return from_source(load(config_path, config_yaml))
