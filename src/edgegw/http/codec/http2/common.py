"""What both sides of the HTTP/2 codec share."""

from __future__ import annotations

import h2.connection
from mypy_extensions import mypyc_attr

from ....config import model as m
from ....stats import Counter, Gauge, StatSet
from .. import Headers

CONNECTION_SPECIFIC = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
    b"host", b"http2-settings"})
"""Never sent on HTTP/2 (RFC 9113 §8.2.2); Host becomes :authority."""
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
WRITE_HIGH = 1024 * 1024
"""Response bytes a stream may have waiting for the peer's window before its upstream is
asked to pause (Envoy's per-stream buffer limit)."""
DEFAULT_WINDOW = 65535
CONTROL_FRAMES = frozenset((3, 4, 6))
"""RST_STREAM, SETTINGS and PING: the frames Envoy counts against max_outbound_control_frames."""


@mypyc_attr(native_class=False)  # its stats are made by StatSet.__init_subclass__
class Http2Stats(StatSet):
    """Envoy's HTTP/2 codec stats (a subset)."""

    rx_reset: Counter
    tx_reset: Counter
    rx_messaging_error: Counter
    header_overflow: Counter
    goaway_sent: Counter
    outbound_flood: Counter
    outbound_control_flood: Counter
    inbound_empty_frames_flood: Counter
    inbound_priority_frames_flood: Counter
    inbound_window_update_frames_flood: Counter
    dropped_headers_with_underscores: Counter
    requests_rejected_with_underscores_in_headers: Counter
    streams_active: Gauge
    pending_send_data: Gauge


class Options:
    """``http2_protocol_options`` with Envoy's defaults."""

    def __init__(self, cfg: m.Http2ProtocolOptions | None) -> None:
        c = cfg or m.Http2ProtocolOptions()
        self.max_concurrent_streams = c.max_concurrent_streams
        self.stream_window = c.initial_stream_window_size
        self.connection_window = c.initial_connection_window_size
        self.hpack_table_size = c.hpack_table_size
        self.max_outbound_frames = c.max_outbound_frames
        self.max_outbound_control_frames = c.max_outbound_control_frames
        self.max_empty_frames = c.max_consecutive_inbound_frames_with_empty_payload
        self.max_priority_per_stream = c.max_inbound_priority_frames_per_stream
        self.max_window_updates_per_data = c.max_inbound_window_update_frames_per_data_frame_sent


class Sender:
    """Data waiting for the peer's flow-control window, for one stream in one direction."""

    __slots__ = ("blocked", "end", "pending", "pending_bytes", "sent_end", "trailers")

    def __init__(self) -> None:
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.end = False
        self.trailers: Headers | None = None
        self.sent_end = False
        self.blocked = False

    def push(self, conn: h2.connection.H2Connection, sid: int) -> int:
        """Sends what the windows allow; returns the DATA frames sent."""
        frames = 0
        while self.pending:
            window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if window <= 0:
                return frames
            data = self.pending[0]
            if len(data) > window:
                self.pending[0] = data[window:]
                data = data[:window]
            else:
                self.pending.pop(0)
            self.pending_bytes -= len(data)
            last = not self.pending and self.end and self.trailers is None
            conn.send_data(sid, data, end_stream=last)
            frames += 1
            if last:
                self.sent_end = True
        if self.end and not self.sent_end:
            self.sent_end = True
            if self.trailers is not None:
                conn.send_headers(sid, self.trailers, end_stream=True)
            else:
                conn.end_stream(sid)
        return frames


def clean_headers(headers: Headers) -> Headers:
    out: Headers = []
    for kv in headers:
        k = kv[0]
        if k in CONNECTION_SPECIFIC or (k == b"te" and kv[1].lower() != b"trailers"):
            continue
        out.append(kv)
    return out
