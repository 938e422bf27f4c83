"""Following a WebSocket's server-side frames, byte by byte: the gateway may add its own close
frame only between two frames."""

from __future__ import annotations

import os

from websockets.frames import Close, Frame, Opcode

from edgegw.http.websocket import GOING_AWAY, FrameEdge


def frame(payload: bytes, opcode: Opcode = Opcode.BINARY, mask: bool = False) -> bytes:
    return Frame(opcode, payload).serialize(mask=mask, extensions=[])


def test_frame_edges_are_found_whatever_the_sizes_and_the_cuts() -> None:
    """Payloads of 0, 125, 126 (16-bit length) and 70,000 bytes (64-bit length), masked or
    not, fed in one read, byte by byte, and cut in odd places."""
    frames = [frame(b""), frame(b"x" * 125, Opcode.TEXT), frame(b"y" * 126),
              frame(os.urandom(70_000)), frame(b"z" * 300, mask=True)]
    stream = b"".join(frames)
    edges = {sum(len(f) for f in frames[:i + 1]) for i in range(len(frames))}
    for cut in (len(stream), 1, 7, 1000):
        follow = FrameEdge()
        for fed in range(0, len(stream), cut):
            follow.feed(stream[fed:fed + cut])
            end = min(fed + cut, len(stream))
            assert follow.at_edge == (end in edges), (cut, end)


def test_the_gateway_s_close_frame_is_a_1001_going_away() -> None:
    assert GOING_AWAY[:2] == bytes([0x88, len(GOING_AWAY) - 2])  # FIN + close, unmasked
    close = Close.parse(GOING_AWAY[2:])
    assert (close.code, close.reason) == (1001, "idle timeout")
    follow = FrameEdge()
    follow.feed(GOING_AWAY)
    assert follow.at_edge  # (it is a whole frame itself)
