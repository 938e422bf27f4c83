"""HTTP/2 both ways over the ``h2`` library (RFC 9113): many streams under one connection.

h2 owns the framing, HPACK and the state machines; this package maps its events to streams
and back, and does what a proxy adds on top:
- flow control that carries back-pressure: a stream whose reader is slow stops having its
  window credited, so the peer stops sending, and response data waits for the peer's window;
- Envoy's flood protections (``http2_protocol_options``): frames and control frames queued
  while the client does not read, empty DATA frames, PRIORITY and WINDOW_UPDATE floods, and
  streams past ``max_concurrent_streams`` refused one by one. h2 itself caps CONTINUATION
  chains and the header list size;
- a graceful GOAWAY on drain, written beside h2 (whose own GOAWAY ends the connection at once).
Codec stats are Envoy's ``http2.*`` (``cluster.<name>.http2.*`` upstream).
"""

from .client import Http2Connection, client_codec
from .common import PREFACE, Http2Stats, Options
from .server import Http2ServerCodec

__all__ = ["PREFACE", "Http2Connection", "Http2ServerCodec", "Http2Stats", "Options",
           "client_codec"]
