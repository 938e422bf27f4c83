"""Bootstrap loading: text → plain data (with origins) → typed model → cross checks.

``load_bootstrap`` is the one entry point; it either returns a ``Bootstrap`` that the runtime
can build from, or raises ``ConfigError`` carrying every problem found, each naming the config
path and, where known, the file and line.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from .dynamic import expand
from .model import Bootstrap
from .source import ConfigError, Path, Source, load

__all__ = ["Bootstrap", "ConfigError", "load_bootstrap", "from_source", "dotted"]


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


def _message(err: dict[str, Any]) -> str:
    kind = err["type"]
    loc = err["loc"]
    if kind == "extra_forbidden":
        return f"field '{loc[-1]}' is not supported by edgegw"
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


def _clean_loc(loc: tuple[Any, ...]) -> Path:
    """Drops pydantic's internal location parts (validator names, union members)."""
    return tuple(p for p in loc if isinstance(p, int)
                 or not str(p).startswith(("function-", "[", "type.googleapis.com/")))


def from_source(src: Source) -> Bootstrap:
    src, dynamic, names = expand(src)
    problems: list[str] = []
    try:
        boot = Bootstrap.model_validate(src.data)
    except ValidationError as e:
        for err in e.errors():
            problems.append(problem(src, _clean_loc(err["loc"]), _message(dict(err)), names))
        raise ConfigError(problems) from None
    # Imported here: the checks read certificate and log-format modules that themselves
    # import the config model, so importing them with this package would be circular.
    from .checks import cross_check

    problems.extend(problem(src, path, msg, names) for path, msg in cross_check(boot))
    if problems:
        raise ConfigError(problems)
    boot._dynamic = dynamic
    boot._files_seen = src.files_seen
    return boot


def load_bootstrap(config_path: str | None, config_yaml: str | None = None) -> Bootstrap:
    return from_source(load(config_path, config_yaml))
