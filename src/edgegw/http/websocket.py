"""Where a WebSocket's server side is in its frames (RFC 6455 §5.2), so that a gateway closing
an idle one can say so with a close frame of its own instead of cutting the socket (edgegw's
addition: Envoy resets it, and clients such as Home Assistant's then see an error)."""

from __future__ import annotations

GOING_AWAY = b"\x88\x0e\x03\xe9idle timeout"
"""A close frame from the server side (unmasked): 1001 going away, "idle timeout"."""


class FrameEdge:
    """Follows the frames of the upstream's side of a WebSocket: their headers are read, their
    payloads counted, never buffered."""

    __slots__ = ("head", "left")

    def __init__(self) -> None:
        self.head = b""
        """The header of the frame being read, so far."""
        self.left = 0
        """Payload bytes of the current frame still to come."""

    @property
    def at_edge(self) -> bool:
        """Between two frames: a frame of the gateway's own may go out now."""
        return not self.head and not self.left

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self.left:
                step = min(self.left, n - i)
                self.left -= step
                i += step
                continue
            head = self.head = self.head + data[i:i + 1]  # (a header is 2 to 14 bytes)
            i += 1
            if len(head) < 2:
                continue
            size = head[1] & 0x7F
            length = 2 + (2 if size == 126 else 8 if size == 127 else 0) + (
                4 if head[1] & 0x80 else 0)
            if len(head) < length:
                continue
            if size == 126:
                size = int.from_bytes(head[2:4], "big")
            elif size == 127:
                size = int.from_bytes(head[2:10], "big")
            self.head = b""
            self.left = size
