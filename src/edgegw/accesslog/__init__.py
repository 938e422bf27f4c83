"""Access logs: Envoy format strings to stdout, stderr or a file, never blocking the loop.

Lines of one event-loop turn are joined and handed to a writer thread, so a slow disk or a
full pipe never stalls proxying. Files are reopened on SIGUSR1, for logrotate.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
from collections.abc import Callable
from typing import IO

from .. import log
from ..config import model as m
from ..http.stream_info import StreamInfo
from .format import compile_template

_log = log.get("http")


class _Writer(threading.Thread):
    """Writes batches to one destination; reopens a file when asked."""

    def __init__(self, kind: str, path: str) -> None:
        super().__init__(name=f"access-log-{kind}", daemon=True)
        self.kind = kind
        self.path = path
        self.batches: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.reopen = threading.Event()
        self._file: IO[str] | None = None

    def _out(self) -> IO[str]:
        if self.kind == "stdout":
            return sys.stdout
        if self.kind == "stderr":
            return sys.stderr
        if self._file is None or self.reopen.is_set():
            self.reopen.clear()
            if self._file is not None:
                self._file.close()
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        return self._file

    def run(self) -> None:
        while True:
            batch = self.batches.get()
            if batch is None:
                break
            try:
                out = self._out()
                out.write(batch)
                out.flush()
            except OSError as e:
                _log.warning("access log %s: write failed: %s", self.path or self.kind, e)
        if self._file is not None:
            self._file.close()


class AccessLogger:
    def __init__(self, cfg: m.AccessLog) -> None:
        sink = cfg.typed_config
        self.format: Callable[[StreamInfo], str] = compile_template(sink.template)
        self.writer = _Writer(sink.kind, sink.path)
        self.writer.start()
        self._pending: list[str] = []
        self._scheduled = False

    def log(self, info: StreamInfo) -> None:
        self._pending.append(self.format(info))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if self._pending:
            batch, self._pending = "".join(self._pending), []
            self.writer.batches.put(batch)

    def reopen(self) -> None:
        self.writer.reopen.set()

    def close(self) -> None:
        self.flush()
        self.writer.batches.put(None)
        self.writer.join(timeout=5)
