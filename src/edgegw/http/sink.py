"""The codecs' ``Sink`` over an asyncio transport: what a connection gives its codec."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class TransportSink:
    """Writes to the transport; reading is paused while any reason to pause is left."""

    __slots__ = ("loop", "reasons", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.reasons: set[str] = set()

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def close(self) -> None:
        self.transport.close()

    def abort(self) -> None:
        self.transport.abort()

    def pause(self, reason: str) -> None:
        if not self.reasons:
            self.transport.pause_reading()
        self.reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self.reasons:
            self.reasons.discard(reason)
            if not self.reasons and not self.transport.is_closing():
                self.transport.resume_reading()

    def schedule(self, callback: Callable[[], None]) -> None:
        self.loop.call_soon(callback)

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size()

    def is_closing(self) -> bool:
        return self.transport.is_closing()
