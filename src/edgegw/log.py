"""Application logging in Envoy's line shape and with Envoy's component loggers.

A line reads ``[2026-11-23 00:36:41.746][1959][info][config] [edgegw/server.py:88] message``,
so tools and eyes trained on Envoy's logs read ours the same way. ``-l`` sets every component,
``--component-log-level upstream:debug,connection:trace`` sets some, ``--log-path`` sends the
lines to a file instead of stderr.
"""

from __future__ import annotations

import logging
import os
import sys
import time

TRACE = 5
logging.addLevelName(TRACE, "trace")

COMPONENTS = (
    "main",
    "config",
    "connection",
    "http",
    "router",
    "upstream",
    "hc",
    "secret",
    "admin",
)
"""Envoy's logger names that edgegw logs under, no more: each is used by some module."""

LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 10,
}

_NAMES = {
    TRACE: "trace",
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


def get(component: str) -> logging.Logger:
    """The logger of one Envoy component, e.g. ``get("upstream")``."""
    return logging.getLogger(f"edgegw.{component}")


class EnvoyFormatter(logging.Formatter):
    """Formats records as Envoy's default log format."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.localtime(record.created)
        ms = int(record.msecs)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", t)
        component = record.name.rsplit(".", 1)[-1] if record.name.startswith("edgegw.") else "main"
        where = _source(record)
        msg = record.getMessage()
        if record.exc_info:
            msg = f"{msg}\n{self.formatException(record.exc_info)}"
        level = _NAMES.get(record.levelno, record.levelname.lower())
        return f"[{stamp}.{ms:03d}][{record.process}][{level}][{component}] [{where}] {msg}"


def _source(record: logging.LogRecord) -> str:
    """``edgegw/path.py:line`` of the call. A compiled module has no Python frame, so the
    nearest one is the event loop's, whose line would mislead (the component, before it,
    still says which part logged)."""
    marker = f"{os.sep}edgegw{os.sep}"
    i = record.pathname.rfind(marker)
    if i >= 0:
        return f"{record.pathname[i + 1:]}:{record.lineno}"
    if record.name.startswith("edgegw."):
        return "edgegw (compiled)"
    return f"{os.path.basename(record.pathname)}:{record.lineno}"


def parse_level(name: str) -> int:
    try:
        return LEVELS[name.lower()]
    except KeyError:
        raise ValueError(
            f"invalid log level '{name}' (expected one of: {', '.join(LEVELS)})"
        ) from None


def parse_component_levels(spec: str) -> dict[str, int]:
    """Parses Envoy's ``--component-log-level`` value: ``upstream:debug,connection:trace``."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, level = part.partition(":")
        if not sep:
            raise ValueError(f"invalid component log level '{part}' (expected NAME:LEVEL)")
        if name not in COMPONENTS:
            raise ValueError(
                f"unknown logger component '{name}' (known: {', '.join(COMPONENTS)})"
            )
        out[name] = parse_level(level)
    return out


def setup(level: int = logging.INFO, components: dict[str, int] | None = None,
          path: str | None = None) -> None:
    """Installs the Envoy-shaped handler; called once by the command line."""
    root = logging.getLogger("edgegw")
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    handler: logging.Handler
    if path:
        handler = logging.FileHandler(path, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EnvoyFormatter())
    root.addHandler(handler)
    root.propagate = False
    root.setLevel(level)
    for name in COMPONENTS:
        get(name).setLevel((components or {}).get(name, level))


def set_level(component: str | None, level: int) -> None:
    """Changes one component's level (or all when component is None) at run time."""
    names = COMPONENTS if component is None else (component,)
    for name in names:
        get(name).setLevel(level)


def level_name(component: str) -> str:
    """A component's current level as Envoy's /logging prints it."""
    return name_of(get(component).level)


def name_of(level: int) -> str:
    return "off" if level > logging.CRITICAL else _NAMES.get(level, "info")
