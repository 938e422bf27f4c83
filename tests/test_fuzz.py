"""Properties under generated input, bounded so the suite stays fast: the HTTP/1 and HTTP/2
codecs, HTTP/2 both ways (any split of valid bytes gives the same events; no input raises;
h2 in the tree, nghttp2 on the compiled build), the ClientHello
parser and config loading (bad input is an answer or a ConfigError, never a traceback)."""

from __future__ import annotations

import os

import h2.config
import h2.connection
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgegw.config import ConfigError, load_bootstrap
from edgegw.listener.tls_inspector import NeedMore, inspect

from .codec_harness import run_codec

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=os.environ.get("EDGEGW_FUZZ_EXPLORE") != "1")
"""The same examples every run, so that a run fails only for a change; EDGEGW_FUZZ_EXPLORE=1
draws new ones (what it finds goes into the test as an ``@example``)."""


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return [p for p in out if p]


TOKEN = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
VALUE = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ;=/.,-",
                max_size=30).map(str.strip)
PATH = st.lists(TOKEN, max_size=4).map(lambda parts: "/" + "/".join(parts))


@st.composite
def h1_request(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]))
    headers = [("host", draw(TOKEN) + ".example")]
    headers += [("x-" + k, v) for k, v in draw(st.lists(st.tuples(TOKEN, VALUE), max_size=5))]
    body = draw(st.binary(max_size=200)) if method in ("POST", "PUT") else b""
    framing = b""
    if body:
        if draw(st.booleans()):
            headers.append(("content-length", str(len(body))))
            framing = body
        else:
            headers.append(("transfer-encoding", "chunked"))
            sizes = draw(st.lists(st.integers(1, 64), max_size=6))
            pos = 0
            for n in sizes:
                piece = body[pos:pos + n]
                if piece:
                    framing += b"%x\r\n%s\r\n" % (len(piece), piece)
                pos += n
            if pos < len(body):
                framing += b"%x\r\n%s\r\n" % (len(body) - pos, body[pos:])
            framing += b"0\r\n\r\n"
    head = f"{method} {draw(PATH)} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode() + b"\r\n" + framing


@FAST
@given(st.lists(h1_request(), min_size=1, max_size=4), st.lists(st.integers(0, 4096),
                                                                 max_size=12))
def test_h1_any_split_of_valid_requests_gives_the_same_events(requests: list[bytes],
                                                              cuts: list[int]) -> None:
    data = b"".join(requests)
    whole = run_codec("h1", [data])
    assert [e[0] for e in whole[0]].count("head") == len(requests)
    assert run_codec("h1", split(data, cuts)) == whole


MUTATIONS = st.sampled_from([b"\r\n", b"\n", b"\x00", b" ", b":", b"\r", b"\x7f", b"0",
                             b"chunked", b"Content-Length: 5\r\n", b"Transfer-Encoding: x\r\n",
                             b"Host: b\r\n", b"\xff", b"GET / HTTP/1.1\r\n"])


@FAST
@given(h1_request(), st.lists(st.tuples(st.integers(0, 4096), MUTATIONS), min_size=1,
                              max_size=4), st.lists(st.integers(0, 4096), max_size=6))
@example(b"GET /00/00/00 HTTP/1.1\r\nhost: 0.example\r\n\r\n", [(11, b"\r\n")], [14])
@example(b"GET /00000 HTTP/1.1\r\nhost: 0.example\r\n\r\n", [(5, b"\n")], [7])
@example(b"GET / HTTP/1.1\r\nhost: 0.example\r\nx-0: /\r\n\r\n", [(5, b"\n")], [7])
def test_h1_mutated_requests_never_raise_and_split_the_same(request: bytes, edits: list,
                                                            cuts: list[int]) -> None:
    data = request
    for at, piece in edits:
        at %= len(data) + 1
        data = data[:at] + piece + data[at:]
    whole = run_codec("h1", [data])
    assert run_codec("h1", split(data, cuts)) == whole


@FAST
@given(st.binary(max_size=600))
def test_h1_arbitrary_bytes_never_raise(data: bytes) -> None:
    events, _ = run_codec("h1", [data])
    heads = [e for e in events if e[0] == "head"]
    assert all(h[2].startswith(b"/") or b"://" in h[2] or h[1] in (b"CONNECT", b"OPTIONS")
               for h in heads)


def h2_bytes(requests: list[tuple[str, list[tuple[str, str]], bytes]]) -> bytes:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    for i, (path, extra, body) in enumerate(requests):
        sid = 1 + 2 * i
        client.send_headers(sid, [(":method", "POST" if body else "GET"), (":scheme", "https"),
                                  (":authority", "a.example"), (":path", path), *extra],
                            end_stream=not body)
        if body:
            client.send_data(sid, body, end_stream=True)
    return client.data_to_send()


H2_REQUEST = st.tuples(PATH, st.lists(st.tuples(TOKEN.map(lambda t: "x-" + t), VALUE),
                                      max_size=4), st.binary(max_size=300))


@FAST
@given(st.lists(H2_REQUEST, min_size=1, max_size=4), st.lists(st.integers(0, 4096),
                                                              max_size=12))
def test_h2_any_split_of_valid_frames_gives_the_same_events(requests: list,
                                                            cuts: list[int]) -> None:
    data = h2_bytes(requests)
    whole = run_codec("h2", [data])
    assert [e[0] for e in whole[0]].count("head") == len(requests)
    assert run_codec("h2", split(data, cuts))[0] == whole[0]


@FAST
@given(st.lists(H2_REQUEST, min_size=1, max_size=2), st.lists(
    st.tuples(st.integers(0, 4096), st.binary(min_size=1, max_size=8)), min_size=1,
    max_size=4))
def test_h2_corrupted_frames_never_raise(requests: list, edits: list) -> None:
    data = h2_bytes(requests)
    for at, piece in edits:
        at = 24 + at % (len(data) - 23)  # past the preface, which is checked before h2
        data = data[:at] + piece + data[at + len(piece):]
    run_codec("h2", [data])


@FAST
@given(st.binary(max_size=2048), st.lists(st.integers(0, 2048), max_size=8))
def test_client_hello_parser_answers_every_input(data: bytes, cuts: list[int]) -> None:
    """Any bytes: a ClientHello (TLS or not) or a request for more, never another error;
    and every prefix of an answerable input asks for more or answers the same."""
    try:
        whole = inspect(data)
    except NeedMore:
        return
    for c in cuts:
        try:
            part = inspect(data[: c % (len(data) + 1)])
        except NeedMore:
            continue
        assert part.tls == whole.tls or not whole.tls or c % (len(data) + 1) == len(data)


@FAST
@given(st.binary(min_size=40, max_size=600), st.integers(0, 20))
def test_client_hello_with_a_real_prefix(tail: bytes, cut: int) -> None:
    data = bytes([22, 3, 1]) + len(tail).to_bytes(2, "big") + bytes([1]) + \
        (len(tail) - 4).to_bytes(3, "big") + tail[4:]
    try:
        hello = inspect(data[: len(data) - cut])
    except NeedMore:
        return
    assert hello.tls


SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.text(max_size=12),
                   st.sampled_from(["1s", "0.5s", "-1s", "TLSv1_2", "ROUND_ROBIN", "STATIC",
                                    "127.0.0.1", "*", "/", "x-y"]))
KEYS = st.sampled_from(["static_resources", "listeners", "clusters", "name", "address",
                        "socket_address", "port_value", "filter_chains", "filters",
                        "typed_config", "@type", "route_config", "virtual_hosts", "domains",
                        "routes", "match", "prefix", "route", "cluster", "connect_timeout",
                        "type", "load_assignment", "endpoints", "lb_endpoints", "endpoint",
                        "stat_prefix", "http_filters", "admin", "overload_manager",
                        "transport_socket", "tls_params", "cipher_suites", "x"])
TREE = st.recursive(SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=4)), max_leaves=25)


@FAST
@given(st.dictionaries(KEYS, TREE, max_size=4))
def test_config_loading_answers_with_a_config_or_a_config_error(doc: dict) -> None:
    try:
        load_bootstrap(None, yaml.safe_dump(doc))
    except ConfigError as e:
        assert e.problems and all(isinstance(p, str) and p for p in e.problems)


@FAST
@given(st.text(max_size=300))
def test_any_text_as_config(text: str) -> None:
    try:
        load_bootstrap(None, text)
    except ConfigError as e:
        assert e.problems


def test_a_header_ending_like_the_url_is_not_http09() -> None:
    """Found by the split property: a read ending inside the next request's URL, after a
    header whose value is that URL, once looked like an HTTP/0.9 request line (426)."""
    data = (b"GET / HTTP/1.1\r\nhost: a\r\nx-0: /\r\n\r\n"
            b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    for cut in range(len(data) + 1):
        events, _ = run_codec("h1", split(data, [cut]))
        assert [e[0] for e in events] == ["head", "head"], cut


def test_http09_is_told_at_any_split() -> None:
    data = b"GET /x\r\n"
    for cut in range(len(data) + 1):
        events, out = run_codec("h1", split(data, [cut]))
        assert events == [("reject", 426)] and out.startswith(b"HTTP/1.1 426"), cut


def test_a_version_less_line_followed_by_junk_gets_426_however_it_is_read() -> None:
    """Found by the mutation property: the same bytes got 400 in one read and 426 when the
    read ended right after the line."""
    data = (b"PUT /000/000/00000/0000\r\n\n00000000 HTTP/1.1\r\nhost: 00.example\r\n"
            b"x-00000: \r\n\r\n")
    whole = run_codec("h1", [data])
    assert whole[0] == [("reject", 426)]
    assert run_codec("h1", split(data, [25])) == whole


class _Pool:
    """The pool's side of an upstream connection, as the client codecs see it."""

    label = "backend"
    secure = True
    max_header_bytes = 60 * 1024
    max_headers = 100

    def release(self, conn: object) -> None:
        pass

    def closed(self, conn: object, with_request: bool = False) -> None:
        pass

    def capacity_changed(self, conn: object) -> None:
        pass


class _Receiver:
    """Records one request's response: headers, the body joined, trailers, the end, a reset."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def upstream_headers(self, status: int, headers: list, end_stream: bool) -> None:
        self.events.append(("headers", status, tuple(headers), end_stream))

    def upstream_data(self, data: bytes, end_stream: bool) -> None:
        if self.events and self.events[-1][0] == "data":
            data = self.events.pop()[1] + data  # type: ignore[operator]
        self.events.append(("data", data))
        if end_stream:
            self.events.append(("end",))

    def upstream_trailers(self, trailers: list) -> None:
        self.events.append(("trailers", tuple(trailers)))

    def upstream_reset(self, reason: str, stale: bool) -> None:
        self.events.append(("reset",))

    def flush(self) -> None:
        pass

    def upstream_write_blocked(self, blocked: bool) -> None:
        pass


H2_RESPONSE = st.tuples(st.sampled_from([200, 204, 404, 503]),
                        st.lists(st.tuples(TOKEN.map(lambda t: "x-" + t), VALUE), max_size=4),
                        st.binary(max_size=300), st.booleans()).map(
    lambda r: (r[0], r[1], b"" if r[0] == 204 else r[2], r[3]))  # (204 has no content)


def h2_exchange(responses: list) -> tuple[object, list[_Receiver], bytes]:
    """A client codec (the one this process runs) that sent one request per response, and
    the bytes a server (h2) answers them with."""
    from edgegw.http.codec import RequestHead, State, http2
    from edgegw.stats import Store

    from .codec_harness import Sink

    conn = http2.client_codec(http2.Options(None), Store(), "backend")(_Pool())
    sink = Sink()
    conn.connected(sink)
    conn.state = State.READY
    receivers = []
    for _ in responses:
        r = _Receiver()
        conn.new_stream(r).encode_headers(RequestHead(b"GET", b"/", [(b"host", b"a")],
                                                      "HTTP/2"), True)
        receivers.append(r)
    sink.settle()
    server = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding=None))
    server.initiate_connection()
    server.receive_data(bytes(sink.out))
    for i, (status, extra, body, trailers) in enumerate(responses):
        sid = 1 + 2 * i
        end = not body and not trailers
        server.send_headers(sid, [(":status", str(status)), *extra], end_stream=end)
        if body:
            server.send_data(sid, body, end_stream=not trailers)
        if trailers:
            server.send_headers(sid, [("grpc-status", "0")], end_stream=True)
    return conn, receivers, server.data_to_send()


@FAST
@given(st.lists(H2_RESPONSE, min_size=1, max_size=4), st.lists(st.integers(0, 4096),
                                                               max_size=12))
def test_h2_upstream_any_split_of_a_servers_frames_gives_the_same_responses(
        responses: list, cuts: list[int]) -> None:
    """The client codec (h2 in the tree, nghttp2 compiled) hears each response whole, however
    the backend's bytes are cut into reads."""
    seen = []
    for pieces in ("whole", "split"):
        conn, receivers, data = h2_exchange(responses)
        for piece in [data] if pieces == "whole" else split(data, cuts):
            conn.feed(piece)  # type: ignore[attr-defined]
        seen.append([r.events for r in receivers])
    assert seen[0] == seen[1]
    for (status, _, body, trailers), events in zip(responses, seen[0], strict=True):
        assert events[0][:2] == ("headers", status)
        assert events[-1] == (("trailers", ((b"grpc-status", b"0"),)) if trailers
                              else ("end",) if body else events[0])
        assert (b"".join(e[1] for e in events if e[0] == "data")) == body


@FAST
@given(st.lists(H2_RESPONSE, min_size=1, max_size=2), st.lists(
    st.tuples(st.integers(0, 4096), st.binary(min_size=1, max_size=8)), min_size=1,
    max_size=4))
def test_h2_upstream_corrupted_frames_never_raise(responses: list, edits: list) -> None:
    """A backend's bytes changed anywhere: the client codec ends the connection or the
    stream, and never raises (nghttp2 reads them in C)."""
    conn, _, data = h2_exchange(responses)
    for at, piece in edits:
        at = at % len(data)
        data = data[:at] + piece + data[at + len(piece):]
    conn.feed(data)  # type: ignore[attr-defined]
