"""The downstream TLS transport (OpenSSL on the socket), in process, against Python's ssl as
the client: the handshake and what it tells (ALPN, the client's certificate, resumption), data
both ways with back-pressure, close_notify on close and none on abort, the alert a failed
handshake sends, and the handshake timeout."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trustme
import uvloop

from edgegw.tls import transport as tls

pytestmark = pytest.mark.skipif(not tls.available(), reason="built without the OpenSSL binding")


class Recorder(asyncio.Protocol):
    """Keeps what the transport tells it, each as an event to wait for."""

    def __init__(self) -> None:
        self.transport: tls.TlsTransport | None = None
        self.data = bytearray()
        self.events: list[str] = []
        self.lost: BaseException | None | str = "alive"
        self.changed = asyncio.Event()
        self.keep_open_on_eof = False

    def _note(self, event: str) -> None:
        self.events.append(event)
        self.changed.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._note("made")

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.changed.set()

    def eof_received(self) -> bool:
        self._note("eof")
        return self.keep_open_on_eof

    def pause_writing(self) -> None:
        self._note("pause")

    def resume_writing(self) -> None:
        self._note("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc
        self._note("lost")

    async def until(self, check: Callable[[], bool]) -> None:
        while not check():
            self.changed.clear()
            await self.changed.wait()

    async def happened(self, event: str) -> None:
        await self.until(lambda: event in self.events)


@pytest.fixture(scope="module")
def pki() -> tuple[trustme.CA, Any]:
    ca = trustme.CA()
    return ca, ca.issue_cert("a.example.com")


def server_context(pki: tuple[trustme.CA, Any], **settings: Any) -> ssl.SSLContext:
    ca, leaf = pki
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(ctx)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    for name, value in settings.items():
        if name == "ciphers":
            ctx.set_ciphers(value)
        else:
            setattr(ctx, name, value)
    if settings.get("verify_mode"):
        ca.configure_trust(ctx)
    return ctx


def client_context(pki: tuple[trustme.CA, Any], **settings: Any) -> ssl.SSLContext:
    ca, _ = pki
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    for name, value in settings.items():
        if name == "ciphers":
            ctx.set_ciphers(value)
        elif name == "alpn":
            ctx.set_alpn_protocols(value)
        elif name == "cert":
            value.configure_cert(ctx)
        else:
            setattr(ctx, name, value)
    return ctx


class Server:
    """A loopback listener handing each accepted socket to the transport."""

    def __init__(self, ctx: ssl.SSLContext, timeout: float = 10.0) -> None:
        self.ctx = ctx
        self.timeout = timeout
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.accepted: asyncio.Queue[tuple[Recorder, asyncio.Future[BaseException | None]]] = \
            asyncio.Queue()
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        conn, _ = self.sock.accept()
        conn.setblocking(False)
        proto = Recorder()
        done: asyncio.Future[BaseException | None] = loop.create_future()
        tls.accept(loop, conn, self.ctx, proto, self.timeout, done.set_result)
        self.accepted.put_nowait((proto, done))

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


def blocking_client(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
                    ) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port))
    return ctx.wrap_socket(raw, server_hostname="a.example.com", session=session,
                           suppress_ragged_eofs=False)


def run(test: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(test())


def test_a_handshake_tells_alpn_the_client_certificate_and_resumption(pki) -> None:
    ca, _ = pki
    alice = ca.issue_cert("alice@example.com")

    async def main() -> None:
        server = Server(server_context(pki, verify_mode=ssl.CERT_OPTIONAL))
        ctx = client_context(pki, alpn=["h2"], cert=alice)
        c = await asyncio.to_thread(blocking_client, server.port, ctx)
        proto, done = await server.accepted.get()
        assert await done is None and proto.events == ["made"]
        info = proto.transport.get_extra_info("ssl_object")
        assert info.selected_alpn_protocol() == "h2"
        assert info.version() == "TLSv1.3" and info.session_reused is False
        der = ssl.PEM_cert_to_DER_cert(alice.cert_chain_pems[0].bytes().decode())
        assert info.getpeercert(binary_form=True) == der
        assert proto.transport.get_extra_info("peername") == c.getsockname()
        # the session ticket arrives with the first read; the next connection resumes on it
        c.sendall(b"ping")
        await proto.until(lambda: proto.data == b"ping")
        proto.transport.write(b"pong")
        assert await asyncio.to_thread(c.recv, 4) == b"pong"
        session = c.session
        c.close()
        again = await asyncio.to_thread(blocking_client, server.port, ctx, session)
        proto2, done2 = await server.accepted.get()
        assert await done2 is None
        info2 = proto2.transport.get_extra_info("ssl_object")
        assert again.session_reused and info2.session_reused
        assert info2.selected_alpn_protocol() == "h2"
        assert info2.getpeercert(binary_form=True) == der  # (the session keeps it)
        again.close()
        # without a certificate, or without ALPN
        plain = await asyncio.to_thread(blocking_client, server.port, client_context(pki))
        proto3, done3 = await server.accepted.get()
        assert await done3 is None
        info3 = proto3.transport.get_extra_info("ssl_object")
        assert info3.getpeercert(binary_form=True) is None
        assert info3.selected_alpn_protocol() is None
        plain.close()
        server.close()

    run(main)


def test_back_pressure_both_ways(pki) -> None:
    """A client that does not read makes the transport pause its protocol's writing, and
    resume it once it drains; a paused reader leaves the client's bytes in the client."""
    async def main() -> None:
        server = Server(server_context(pki))
        c = await asyncio.to_thread(blocking_client, server.port, client_context(pki))
        proto, done = await server.accepted.get()
        assert await done is None
        t = proto.transport
        t.set_write_buffer_limits(high=65536)
        block = bytes(range(256)) * 4096  # 1 MiB
        for _ in range(8):
            t.write(block)
        assert "pause" in proto.events and t.get_write_buffer_size() > 65536
        got = bytearray()

        def read_all() -> None:
            while len(got) < 8 * len(block):
                got.extend(c.recv(1 << 20))

        await asyncio.to_thread(read_all)
        assert got == block * 8
        await proto.happened("resume")
        assert t.get_write_buffer_size() == 0

        # reading paused: what the client sends stays in the socket, however often the loop
        # runs, until reading resumes
        t.pause_reading()
        assert not t.is_reading()
        c.sendall(b"held")
        sock = t.get_extra_info("socket")
        while True:
            try:
                sock.recv(1, socket.MSG_PEEK)
                break
            except BlockingIOError:
                await asyncio.sleep(0)
        for _ in range(20):
            await asyncio.sleep(0)
        assert not proto.data
        t.resume_reading()
        await proto.until(lambda: proto.data == b"held")
        c.close()
        server.close()

    run(main)


def test_close_sends_close_notify_and_abort_does_not(pki) -> None:
    async def main() -> None:
        server = Server(server_context(pki))
        for end in ("close", "abort"):
            c = await asyncio.to_thread(blocking_client, server.port, client_context(pki))
            proto, done = await server.accepted.get()
            assert await done is None
            proto.transport.write(b"bye")
            getattr(proto.transport, end)()
            assert proto.transport.is_closing()
            await proto.happened("lost")
            assert proto.lost is None
            assert await asyncio.to_thread(c.recv, 3) == b"bye"
            if end == "close":  # a clean end: close_notify, then EOF
                assert await asyncio.to_thread(c.recv, 1) == b""
            else:
                with pytest.raises((ssl.SSLEOFError, ConnectionResetError)):
                    await asyncio.to_thread(c.recv, 1)
            c.close()
        server.close()

    run(main)


def test_the_clients_close_notify_is_an_end_of_input(pki) -> None:
    async def main() -> None:
        server = Server(server_context(pki))
        for keep_open in (False, True):
            c = await asyncio.to_thread(blocking_client, server.port, client_context(pki))
            proto, done = await server.accepted.get()
            proto.keep_open_on_eof = keep_open
            assert await done is None
            c.sendall(b"last words")
            unwrap = asyncio.create_task(asyncio.to_thread(c.unwrap))  # close_notify
            await proto.happened("eof")
            assert proto.data == b"last words"
            if keep_open:  # the protocol closes when it is done
                assert not proto.transport.is_closing()
                proto.transport.close()
            await proto.happened("lost")
            await unwrap  # (the server's close_notify answered it)
            assert proto.lost is None
            c.close()
        server.close()

    run(main)


def test_a_failed_handshake_sends_its_alert(pki) -> None:
    """No cipher in common: the client is told (handshake_failure), not hung up on."""
    async def main() -> None:
        server = Server(server_context(pki, maximum_version=ssl.TLSVersion.TLSv1_2,
                                       ciphers="ECDHE-RSA-AES128-GCM-SHA256:"
                                               "ECDHE-ECDSA-AES128-GCM-SHA256"))
        ctx = client_context(pki, maximum_version=ssl.TLSVersion.TLSv1_2,
                             ciphers="ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384")
        with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
            await asyncio.to_thread(blocking_client, server.port, ctx)
        proto, done = await server.accepted.get()
        exc = await done
        assert isinstance(exc, ssl.SSLError) and "no shared cipher" in str(exc)
        assert proto.events == []
        server.close()

    run(main)


def test_a_stalled_handshake_times_out(pki) -> None:
    """A client that sends its hello and never finishes is dropped when the timeout ends."""
    async def main() -> None:
        server = Server(server_context(pki), timeout=0.2)
        client = client_context(pki).wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(),
                                              server_hostname="a.example.com")
        with pytest.raises(ssl.SSLWantReadError):
            client.do_handshake()
        raw = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", server.port))
        raw.sendall(out.read())
        proto, done = await server.accepted.get()
        exc = await done
        assert isinstance(exc, TimeoutError) and proto.events == []

        def drain() -> bytes:
            seen = b""
            while chunk := raw.recv(65536):
                seen += chunk
            return seen

        assert (await asyncio.to_thread(drain))[:1] == b"\x16"  # its flight, then EOF
        raw.close()
        server.close()

    run(main)


def test_a_request_sent_with_the_clients_finished_is_read(pki) -> None:
    """A client may send its Finished and its first request in one segment; OpenSSL reads both
    with the handshake, and the request must not wait in its buffer for more bytes that will
    never come."""
    async def main() -> None:
        server = Server(server_context(pki))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = client_context(pki).wrap_bio(incoming, outgoing,
                                              server_hostname="a.example.com")
        raw = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", server.port))
        proto, done = await server.accepted.get()

        def handshake() -> None:
            while True:
                try:
                    client.do_handshake()
                    return
                except ssl.SSLWantReadError:
                    raw.sendall(outgoing.read())
                    incoming.write(raw.recv(65536))

        await asyncio.to_thread(handshake)
        client.write(b"GET / HTTP/1.1\r\n\r\n")
        raw.sendall(outgoing.read())  # Finished and the request, in one send
        assert await done is None
        await asyncio.wait_for(proto.until(lambda: proto.data == b"GET / HTTP/1.1\r\n\r\n"), 30)
        raw.close()
        server.close()

    run(main)


def test_an_answer_outlives_the_bytes_the_client_was_still_sending(pki) -> None:
    """The server answers and closes while the client is still sending (an upload refused
    early): its input is read and dropped until the client is done (Envoy's delayed close), so
    no reset destroys the answer before the client reads it."""
    async def main() -> None:
        server = Server(server_context(pki))
        c = await asyncio.to_thread(blocking_client, server.port, client_context(pki))
        proto, done = await server.accepted.get()
        assert await done is None
        sending = asyncio.create_task(asyncio.to_thread(c.sendall, b"x" * (8 << 20)))
        await proto.until(lambda: len(proto.data) > 0)
        proto.transport.write(b"413 refused")
        proto.transport.close()
        await sending  # (a reset would have failed it)
        assert await asyncio.to_thread(c.recv, 11) == b"413 refused"
        assert await asyncio.to_thread(c.recv, 1) == b""  # close_notify
        await proto.happened("lost")
        c.close()
        server.close()

    run(main)
