"""What both sides of the HTTP/1 codec share."""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from ....stats import Counter, StatSet
from .. import (
    REASONS,
    Headers,
)


@mypyc_attr(native_class=False)  # its stats are made by StatSet.__init_subclass__
class Http1Stats(StatSet):
    """Envoy's HTTP/1 codec stats (a subset)."""

    dropped_headers_with_underscores: Counter
    requests_rejected_with_underscores_in_headers: Counter

_STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in REASONS.items()}
LAST_CHUNK = b"0\r\n\r\n"
FRAMING = frozenset((b"content-length", b"transfer-encoding"))
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def status_line(code: int) -> bytes:
    line = _STATUS_LINES.get(code)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % code


def encode_headers(headers: Headers) -> bytes:
    out: list[bytes] = []
    for k, v in headers:  # measured: faster than formatting each line
        out += (k, b": ", v, b"\r\n")
    return b"".join(out)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class TooLarge(Exception):
    pass


