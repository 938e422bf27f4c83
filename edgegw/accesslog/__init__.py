"""Access logs: Envoy's default format to stdout, stderr or a file.

Lines are collected during one turn of the event loop and written together afterwards, so a
busy gateway makes one write call per loop turn, not one per request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from dataclasses import dataclass, field
from typing import IO

from ..config import model as m


@dataclass
class Record:
    """What one request leaves behind for the access log."""

    start: float
    method: str = "-"
    path: str = "-"
    protocol: str = "HTTP/1.1"
    code: int = 0
    flags: str = "-"
    bytes_received: int = 0
    bytes_sent: int = 0
    duration_ms: int = 0
    upstream_service_time: str = "-"
    forwarded_for: str = "-"
    user_agent: str = "-"
    request_id: str = "-"
    authority: str = "-"
    upstream_host: str = "-"
    extra: dict[str, str] = field(default_factory=dict)


def _q(v: str | None) -> str:
    return v if v else "-"


def default_format(r: Record) -> str:
    """Envoy's default access log format, operator by operator."""
    t = dt.datetime.fromtimestamp(r.start, dt.UTC)
    start = t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
    return (f'[{start}] "{r.method} {r.path} {r.protocol}" {r.code} {r.flags} '
            f"{r.bytes_received} {r.bytes_sent} {r.duration_ms} {_q(r.upstream_service_time)} "
            f'"{_q(r.forwarded_for)}" "{_q(r.user_agent)}" "{_q(r.request_id)}" '
            f'"{_q(r.authority)}" "{_q(r.upstream_host)}"\n')


class AccessLogger:
    def __init__(self, cfg: m.AccessLog) -> None:
        self.sink = cfg.sink
        self.path = cfg.path
        self._file: IO[str] | None = None
        self._pending: list[str] = []
        self._scheduled = False

    def _stream(self) -> IO[str]:
        if self.sink == "stdout":
            return sys.stdout
        if self.sink == "stderr":
            return sys.stderr
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115
        return self._file

    def log(self, record: Record) -> None:
        self._pending.append(default_format(record))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        try:
            out = self._stream()
            out.write("".join(lines))
            out.flush()
        except OSError:
            pass

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
