"""HTTP/1.1 both ways: httptools (llhttp) parses, this package writes every HTTP/1 byte.

llhttp is strict by default: it already refuses Content-Length with Transfer-Encoding, bad
chunk sizes and bare LFs in chunk lines. What is HTTP/1's own stays here: keep-alive and
``connection: close``, chunked framing, ``100 Continue``, pipelining (one response at a time,
in order; requests that arrive meanwhile wait with reading paused; above the connection's write
high-water mark no new one starts, as in Envoy's connection manager) and the switch to raw
bytes after an upgrade. Trailers of chunked messages are dropped, as Envoy does unless
``enable_trailers`` is set.
"""

from .client import Http1Connection
from .common import Http1Stats, chunk, encode_headers, status_line
from .server import Http1ServerCodec

__all__ = ["Http1Connection", "Http1ServerCodec", "Http1Stats", "chunk", "encode_headers",
           "status_line"]
