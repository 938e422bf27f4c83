"""What one client can make a codec hold, driven with bytes: requests pipelined by a client
that does not read, streams past max_concurrent_streams, frames queued for a client that does
not read, and window credit for a stream whose upstream is slow."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
from hyperframe.frame import PingFrame

from edgegw.config import model as m
from edgegw.http.codec import http2

from .codec_harness import Manager, Sink, h1_codec, h2_codec


def pipelined(n: int, path_size: int = 2000) -> bytes:
    line = b"GET /%s HTTP/1.1\r\nHost: a.example\r\n\r\n" % (b"x" * path_size)
    return line * n


def test_h1_a_client_that_pipelines_without_reading_gets_no_more_requests_started() -> None:
    """Above the write high-water mark no pipelined request starts and reading stops (Envoy
    stops too); once the client reads, every request is answered, in order."""

    mgr, sink = Manager(body=b"r" * 10_000), Sink()
    sink.reading, sink.high = False, 64 * 1024
    codec = h1_codec(mgr, sink)
    codec.feed(pipelined(300))
    sink.settle()
    started = sum(1 for e in mgr.events if e[0] == "head")
    assert 6 <= started <= 8, started  # the responses that fill 64 KiB, then nothing
    assert sink.paused and sink.blocked
    held = len(sink.out)
    sink.settle()
    assert len(sink.out) == held
    sink.read_all()
    sink.settle()
    assert sum(1 for e in mgr.events if e[0] == "head") == 300
    assert bytes(sink.out).count(b"HTTP/1.1 200 OK\r\n") == 300
    assert not sink.paused


def test_h1_a_reading_client_pipelines_as_before() -> None:
    mgr, sink = Manager(body=b"r" * 10_000), Sink()
    sink.high = 64 * 1024
    h1_codec(mgr, sink).feed(pipelined(50))
    sink.settle()
    assert bytes(sink.out).count(b"HTTP/1.1 200 OK\r\n") == 50
    assert not sink.paused


class Client:
    """An h2 client whose stream limit is ours to break."""

    def __init__(self) -> None:
        self.h2 = _Unlimited(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()

    def open(self, sid: int, end: bool = True) -> None:
        self.h2.send_headers(sid, [(":method", "GET"), (":scheme", "https"),
                                   (":authority", "a.example"), (":path", "/")],
                             end_stream=end)

    def send(self) -> bytes:
        return self.h2.data_to_send()

    def events(self, data: bytes) -> list[h2.events.Event]:
        return self.h2.receive_data(data)


class _Unlimited(h2.connection.H2Connection):
    open_outbound_streams = 0  # type: ignore[assignment]  # (to go past the server's limit)


def test_h2_defaults_are_what_envoy_1_40_advertises() -> None:
    """1024 streams, 16 MiB per stream, 24 MiB per connection, read off Envoy 1.40's
    SETTINGS and WINDOW_UPDATE on a config that sets none of them."""

    sink, client = Sink(), Client()
    h2_codec(Manager(), sink)
    sink.settle()
    client.events(bytes(sink.out))
    remote = client.h2.remote_settings
    assert remote.max_concurrent_streams == 1024
    assert remote.initial_window_size == 16 * 1024 * 1024
    assert client.h2.outbound_flow_control_window == 24 * 1024 * 1024


def test_h2_streams_past_the_limit_are_refused_one_by_one() -> None:
    """REFUSED_STREAM for each stream past max_concurrent_streams, as Envoy does; the
    connection and the streams under way go on, and a slot freed is taken again."""

    mgr, sink, client = Manager(body=None), Sink(), Client()
    codec = h2_codec(mgr, sink, m.Http2ProtocolOptions(max_concurrent_streams=10))
    for i in range(15):
        client.open(1 + 2 * i)
    codec.feed(client.send())
    sink.settle()
    events = client.events(bytes(sink.out))
    refused = [e.stream_id for e in events if isinstance(e, h2.events.StreamReset)
               and e.error_code == h2.errors.ErrorCodes.REFUSED_STREAM]
    assert refused == [21, 23, 25, 27, 29]
    assert sum(1 for e in mgr.events if e[0] == "head") == 10
    assert not sink.closing and codec.stats.tx_reset.value == 5
    mgr.streams[0].body = b"done"
    mgr.streams[0].answer()  # stream 1 ends: a new stream fits again
    client.open(31)
    codec.feed(client.send())
    sink.settle()
    events = client.events(bytes(sink.out))
    assert not any(isinstance(e, h2.events.StreamReset) and e.stream_id == 31
                   for e in events)
    assert sum(1 for e in mgr.events if e[0] == "head") == 11


def test_h2_a_body_sent_on_a_refused_stream_leaves_the_connection_alone() -> None:
    """A client that sent its upload's first DATA before it saw REFUSED_STREAM: that stream
    is answered alone (RST_STREAM) and its bytes still count back to the connection window.
    nghttp2 refuses so only before the client acknowledged the limit; past an acknowledged
    limit it ends the connection (PROTOCOL_ERROR), as Envoy did on nghttp2."""

    mgr, sink, client = Manager(body=None), Sink(), Client()
    codec = h2_codec(mgr, sink, m.Http2ProtocolOptions(max_concurrent_streams=1,
                                                     initial_connection_window_size=65535))
    client.events(bytes(sink.out))
    client.open(1, end=False)
    client.open(3, end=False)  # refused
    for _ in range(4):
        client.h2.send_data(3, b"x" * 16000)
    codec.feed(client.send())
    sink.settle()
    events = client.events(bytes(sink.out))
    if http2.CODEC == "nghttp2":
        assert sink.closing and [e.error_code for e in events if isinstance(
            e, h2.events.ConnectionTerminated)] == [h2.errors.ErrorCodes.PROTOCOL_ERROR]
        assert ("protocol_error",) in mgr.events
        return
    assert not sink.closing
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
    resets = {e.stream_id for e in events if isinstance(e, h2.events.StreamReset)}
    assert resets == {3}
    credit = sum(e.delta or 0 for e in events
                 if isinstance(e, h2.events.WindowUpdated) and not e.stream_id)
    assert credit >= 32_000  # (h2 credits the connection once half its window is used)
    client.h2.send_data(1, b"y" * 100, end_stream=True)  # the accepted stream goes on
    codec.feed(client.send())
    sink.settle()
    assert ("data", b"y" * 100) in mgr.events and ("end",) in mgr.events


def test_h2_streams_answered_between_reads_never_count_against_the_limit() -> None:
    """Open streams are counted from the codec's table (h2 walks all its streams at each new
    one: O(n²) under a flood), and h2 still forgets the streams that closed."""

    mgr, sink, client = Manager(), Sink(), Client()
    codec = h2_codec(mgr, sink, m.Http2ProtocolOptions(max_concurrent_streams=100))
    for read in range(30):
        for i in range(100):
            client.open(1 + 2 * (read * 100 + i))
        codec.feed(client.send())
        sink.settle()
    assert sum(1 for e in mgr.events if e[0] == "head") == 3000
    assert codec.stats.tx_reset.value == 0
    if http2.CODEC == "h2":
        assert len(codec.h2.streams) < 400  # answered streams are not kept


def ping_reads(client: Client, reads: int, per_read: int = 100) -> list[bytes]:
    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    return [client.send() + ping * per_read] + [ping * per_read] * (reads - 1)


def test_h2_a_client_that_sends_pings_and_never_reads_is_closed_at_1000_queued() -> None:
    sink, client = Sink(), Client()
    sink.reading = False
    codec = h2_codec(Manager(), sink)
    fed = 0
    for data in ping_reads(client, 30):
        if sink.closing:
            break
        codec.feed(data)
        fed += 1
        sink.settle()
    assert sink.closing and codec.stats.outbound_control_flood.value == 1
    assert fed <= 12, fed  # 1000 PING ACKs queued, give or take one read
    assert sink.unread < 20_000


def test_h2_pings_from_a_client_that_reads_are_answered() -> None:
    sink, client = Sink(), Client()
    codec = h2_codec(Manager(), sink)
    for data in ping_reads(client, 30):
        codec.feed(data)
        sink.settle()
    assert not sink.closing and codec.stats.outbound_control_flood.value == 0
    assert bytes(sink.out).count(PingFrame(0, flags=["ACK"], opaque_data=b"12345678")
                               .serialize()) == 3000


def test_h2_a_client_that_reads_slowly_but_steadily_is_not_a_flood() -> None:
    """What counts is what waits in the buffer now, not all that went through it since it
    was last empty: a client always a little behind (a long download on a slow link) is
    never taken for a flood."""

    sink, client = Sink(), Client()
    sink.reading = False
    codec = h2_codec(Manager(), sink)
    for data in ping_reads(client, 100):
        codec.feed(data)
        sink.settle()
        sink.read(sink.unread - 1000)  # always 1000 bytes behind
    assert not sink.closing and codec.stats.outbound_control_flood.value == 0


def test_h2_a_client_that_asks_and_never_reads_is_closed_at_10000_frames() -> None:
    """Each answered request queues HEADERS and DATA: past max_outbound_frames the
    connection ends (``http2.outbound_flood``) instead of the buffer growing."""

    mgr, sink, client = Manager(body=b"ok"), Sink(), Client()
    sink.reading = False
    codec = h2_codec(mgr, sink)
    sid = 1
    while not sink.closing and sid < 20_000:
        for _ in range(100):
            client.open(sid)
            sid += 2
        codec.feed(client.send())
        sink.settle()
    assert codec.stats.outbound_flood.value == 1
    assert 5000 <= sid // 2 <= 5200, sid  # two frames a response


def test_h2_a_slow_upstream_stops_the_credit_of_its_stream() -> None:
    """A stream whose body is read-disabled (its upstream is behind) gets no WINDOW_UPDATE:
    the client can send one window more, no further; credit returns when it resumes."""

    mgr, sink, client = Manager(body=None), Sink(), Client()
    codec = h2_codec(mgr, sink, m.Http2ProtocolOptions(initial_stream_window_size=65536))
    client.events(bytes(sink.out))
    client.open(1, end=False)
    codec.feed(client.send())
    sink.settle()
    encoder = mgr.streams[0].encoder
    encoder.read_disable("upstream", True)
    for _ in range(3):  # past half the window: h2 would credit it back at once
        client.h2.send_data(1, b"x" * 13_000)
    sink.out.clear()
    codec.feed(client.send())
    sink.settle()
    updates = [e for e in client.events(bytes(sink.out))
               if isinstance(e, h2.events.WindowUpdated) and e.stream_id == 1]
    assert not updates
    assert client.h2.local_flow_control_window(1) == 65536 - 39_000
    sink.out.clear()
    encoder.read_disable("upstream", False)
    sink.settle()
    updates = [e for e in client.events(bytes(sink.out))
               if isinstance(e, h2.events.WindowUpdated) and e.stream_id == 1]
    assert sum(e.delta or 0 for e in updates) == 39_000


def test_h2_an_hpack_bomb_never_becomes_a_request() -> None:
    """A 5 kB header block that decodes to 4 MB: one 4,000-byte field put in the dynamic
    table, then named by its index a thousand times. The decoded list passes the 60 kB limit
    long before the end: nothing reaches the streams, ``header_overflow`` counts it, and the
    stream (nghttp2) or the connection (h2) is refused."""

    mgr, sink, client = Manager(), Sink(), Client()
    codec = h2_codec(mgr, sink)
    sink.settle()
    client.events(bytes(sink.out))
    block = (b"\x82\x87\x84" + b"\x01\x09a.example"  # GET https / a.example (not indexed)
             + b"\x40\x06x-bomb\x7f\xa1\x1e" + b"v" * 4000  # into the dynamic table (62)
             + b"\xbe" * 1000)
    header = len(block).to_bytes(3, "big") + b"\x01\x05" + (1).to_bytes(4, "big")
    codec.feed(client.send() + header + block)
    sink.settle()
    assert not [e for e in mgr.events if e[0] == "head"]
    assert codec.stats.header_overflow.value == 1
    out, at, resets = bytes(sink.out), 0, []
    while at + 9 <= len(out):  # (the client never opened stream 1: h2 would not take its RST)
        if out[at + 3] == 3:
            resets.append(int.from_bytes(out[at + 5:at + 9], "big"))
        at += 9 + int.from_bytes(out[at:at + 3], "big")
    assert sink.closing or resets == [1]
    if not sink.closing:  # the connection goes on: the next request is served
        client.h2.send_headers(3, [(":method", "GET"), (":scheme", "https"),
                                   (":authority", "a.example"), (":path", "/next")],
                               end_stream=True)
        codec.feed(client.send())
        sink.settle()
        assert [e[2] for e in mgr.events if e[0] == "head"] == [b"/next"]
