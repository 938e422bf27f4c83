"""The h2 library's connection objects, set up as Envoy's options ask: the client's, and the
server's, changed where a flood of HEADERS hurts."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
from h2.connection import _decode_headers
from h2.stream import StreamClosedBy
from hyperframe.frame import Frame, HeadersFrame, RstStreamFrame
from mypy_extensions import mypyc_attr

from .common import DEFAULT_WINDOW, Options


def h2_config(client: bool) -> h2.config.H2Configuration:
    return h2.config.H2Configuration(
        client_side=client, header_encoding=None, validate_outbound_headers=False,
        normalize_outbound_headers=False)


def setup_connection(conn: h2.connection.H2Connection, opts: Options, max_header_bytes: int) -> None:
    """Our settings and windows, and the connection preface."""
    client = conn.config.client_side
    s = h2.settings.SettingCodes
    values = {s.INITIAL_WINDOW_SIZE: opts.stream_window, s.HEADER_TABLE_SIZE: opts.hpack_table_size,
              s.MAX_HEADER_LIST_SIZE: max_header_bytes}
    if client:
        values[s.ENABLE_PUSH] = 0
    else:
        values[s.MAX_CONCURRENT_STREAMS] = opts.max_concurrent_streams
    conn.local_settings = h2.settings.Settings(client=client, initial_values=values)
    conn.initiate_connection()
    if opts.connection_window > DEFAULT_WINDOW:
        conn.increment_flow_control_window(opts.connection_window - DEFAULT_WINDOW)
    conn.decoder.max_header_list_size = max_header_bytes


@mypyc_attr(native_class=False)  # a subclass of a Python class
class ServerConnection(h2.connection.H2Connection):
    """h2's server side, changed where a flood of HEADERS hurts: a stream past
    max_concurrent_streams is refused alone (REFUSED_STREAM, as Envoy does; h2 would end the
    whole connection), and open streams are counted from the codec's own table instead of
    h2's walk over every stream at each new one (O(n²) under a flood)."""

    def __init__(self, active: dict[int, Any]) -> None:
        super().__init__(h2_config(False))
        self.active = active
        """The codec's streams: open until both their request and response are done."""
        self.opened_in_read = 0
        """Streams opened in the read being parsed (the codec hears of them after it)."""
        self.refused = 0
        self.prune_at = 64

    def receive_data(self, data: Any) -> list[h2.events.Event]:
        self.opened_in_read = 0
        if len(self.streams) > self.prune_at:
            self._open_streams(1)  # h2 forgets closed streams in that walk (now and then)
            self.prune_at = 2 * len(self.streams) + 64
        return super().receive_data(data)

    @property
    def open_inbound_streams(self) -> int:
        return len(self.active) + self.opened_in_read

    def _receive_headers_frame(self, frame: HeadersFrame
                               ) -> tuple[list[Frame], list[h2.events.Event]]:
        sid = frame.stream_id
        if sid in self.streams or sid <= self.highest_inbound_stream_id or not sid % 2:
            return super()._receive_headers_frame(frame)  # (h2 tells what is wrong)
        if self.open_inbound_streams < self.local_settings.max_concurrent_streams:
            result = super()._receive_headers_frame(frame)
            self.opened_in_read += 1
            return result
        _decode_headers(self.decoder, frame.data)  # HPACK's state moves on all the same
        self.highest_inbound_stream_id = sid
        self._closed_streams[sid] = StreamClosedBy.SEND_RST_STREAM
        self.refused += 1
        return [RstStreamFrame(sid, error_code=h2.errors.ErrorCodes.REFUSED_STREAM)], []


def client_connection(opts: Options, max_header_bytes: int) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2_config(True))
    setup_connection(conn, opts, max_header_bytes)
    return conn
