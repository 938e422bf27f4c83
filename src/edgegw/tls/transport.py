"""Downstream TLS with OpenSSL on the socket: the transport a TLS filter chain gives its
connections (Envoy's SslSocket).

The event loop's own TLS layer (SSLProtocol) runs OpenSSL over memory BIOs: each read is
copied into OpenSSL, decrypted out of it and handed through a protocol object of its own, and
each connection carries both BIOs and that object. Measured with one worker, that layer was
~100 µs of a resumed connection's ~960 and ~9 kB of an idle connection's 31. Here OpenSSL
reads and writes the socket itself, driven by the loop's readiness callbacks, one C call per
event (``openssl_shim.c``, bound by ``openssl_build.py`` when the wheel is built). A failed
handshake's alert now reaches the client, as Envoy sends it.

Where the binding is missing (the source tree, a build without OpenSSL's headers) or
``EDGEGW_TLS_TRANSPORT=loop`` says so, the loop's layer serves, as before; ``/server_info``
names the one running. Upstream connections always use the loop's layer.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import weakref
from collections.abc import Callable
from typing import Any

from .openssl import ssl_ctx

try:
    from ._openssl import ffi, lib
except ImportError:  # the source tree, or a build without OpenSSL's headers
    ffi = lib = None
if lib is not None and lib.eg_openssl_version() != ssl.OPENSSL_VERSION_NUMBER:
    ffi = lib = None  # another OpenSSL than Python's: its SSL_CTX is not ours to drive

TRANSPORT = os.environ.get("EDGEGW_TLS_TRANSPORT") or ("openssl" if lib is not None else "loop")
"""Which layer serves downstream TLS in this process: ``openssl`` (this module) or ``loop``."""
if TRANSPORT not in ("openssl", "loop") or (TRANSPORT == "openssl" and lib is None):
    raise SystemExit(f"EDGEGW_TLS_TRANSPORT={TRANSPORT}: this build has "
                     + ("openssl and loop" if lib is not None else "loop only"))

DELAYED_CLOSE = 1.0
"""How long a closed connection waits for the client's own close (Envoy's HCM
``delayed_close_timeout``, 1 s by default)."""
DONE, WANT_READ, WANT_WRITE, CLOSED, EOF = (
    (lib.EG_DONE, lib.EG_WANT_READ, lib.EG_WANT_WRITE, lib.EG_CLOSED, lib.EG_EOF)
    if lib is not None else (0, 1, 2, 3, 4))
"""Why a call into OpenSSL stopped (``openssl_shim.c``), read from the binding once."""
READ_SIZE = 65536
_buf: Any = ffi.new("char[]", READ_SIZE) if ffi is not None else None
"""One read buffer for every connection: a read is copied out of it before the next."""
_status: Any = ffi.new("int *") if ffi is not None else None
_err: Any = ffi.new("char[]", 256) if ffi is not None else None
_contexts: weakref.WeakKeyDictionary[ssl.SSLContext, Any] = weakref.WeakKeyDictionary()
"""Each context's SSL_CTX, found once (a context lives as long as its certificate)."""


def available() -> bool:
    return TRANSPORT == "openssl"


def describe() -> str:
    """The transport, as ``/server_info``'s version names it."""
    if TRANSPORT == "loop":
        return "tls-loop"
    v = lib.eg_openssl_version()
    return f"tls-openssl-{v >> 28}.{(v >> 20) & 0xff}.{(v >> 4) & 0xff}"


def accept(loop: asyncio.AbstractEventLoop, sock: socket.socket, ctx: ssl.SSLContext,
           protocol: asyncio.Protocol, timeout: float,
           done: Callable[[BaseException | None], None]) -> TlsTransport:
    """Starts the server handshake on an accepted socket whose ClientHello is waiting in it;
    ``done`` is called once, after ``protocol.connection_made`` or with why it failed."""
    ptr = _contexts.get(ctx)
    if ptr is None:
        found = ssl_ctx(ctx)
        ptr = _contexts[ctx] = ffi.cast("SSL_CTX *", found) if found else ffi.NULL
    t = lib.eg_tls_new(ptr, sock.fileno()) if ptr != ffi.NULL else ffi.NULL
    if t == ffi.NULL:
        raise ssl.SSLError("cannot make an OpenSSL connection on this context")
    transport = TlsTransport(loop, sock, ctx, t, protocol)
    transport.start(timeout, done)
    return transport


class TlsInfo:
    """What ``get_extra_info("ssl_object")`` gives: the part of ``ssl.SSLObject`` edgegw
    reads."""

    __slots__ = ("_transport",)

    def __init__(self, transport: TlsTransport) -> None:
        self._transport = transport

    def selected_alpn_protocol(self) -> str | None:
        t = self._transport._t
        if t is None:
            return None
        size = ffi.new("unsigned int *")
        data = lib.eg_tls_alpn(t, size)
        return ffi.buffer(data, size[0])[:].decode("ascii") if data and size[0] else None

    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        """The client's certificate, DER-encoded (the only form edgegw reads)."""
        assert binary_form, "only the DER form"
        t = self._transport._t
        if t is None:
            return None
        size = lib.eg_tls_peer_der(t, ffi.NULL, 0)
        if size <= 0:
            return None
        der = ffi.new("unsigned char[]", size)
        lib.eg_tls_peer_der(t, der, size)
        return ffi.buffer(der, size)[:]

    @property
    def session_reused(self) -> bool:
        t = self._transport._t
        return t is not None and bool(lib.eg_tls_session_reused(t))

    def version(self) -> str | None:
        t = self._transport._t
        return ffi.string(lib.eg_tls_version(t)).decode() if t is not None else None



class TlsTransport(asyncio.Transport):
    """asyncio's Transport over an OpenSSL connection on a non-blocking socket."""

    __slots__ = ("_closing", "_ctx", "_done", "_fd", "_high", "_loop", "_low", "_pending",
                 "_protocol", "_protocol_paused", "_read_wants_write", "_reader", "_reading",
                 "_sock", "_t", "_timer", "_writer")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 ctx: ssl.SSLContext, t: Any, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._ctx = ctx
        """Held while the connection lives: OpenSSL's ALPN callback reads its protocols."""
        self._t: Any = t
        """The OpenSSL connection; None once the transport is closed."""
        self._protocol = protocol
        self._done: Callable[[BaseException | None], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._pending = bytearray()
        """Bytes written while the socket was full, in order."""
        self._closing = False
        self._reading = False
        self._reader = False
        """The loop watches the socket for reading, with ``_readable``: one watch from the
        handshake to the close, because each new watch costs uvloop a poll handle, an ioctl
        and three epoll_ctl calls (strace), and each end of one three more."""
        self._writer = False
        self._read_wants_write = False
        self._high = 65536
        self._low = 16384
        self._protocol_paused = False

    # --- handshake -----------------------------------------------------------------------

    def start(self, timeout: float, done: Callable[[BaseException | None], None]) -> None:
        self._done = done
        self._timer = self._loop.call_later(timeout, self._handshake_timeout)
        self._handshake()

    def _handshake(self) -> None:
        if self._t is None:
            return
        st = lib.eg_tls_handshake(self._t)
        if st == DONE:
            self._set_writer(False)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._reading = True
            self._set_reader(True)
            self._protocol.connection_made(self)
            self._finish_handshake(None)
            if self._t is not None and lib.eg_tls_pending(self._t):
                self._loop.call_soon(self._read_ready)  # (read ahead with the handshake)
        elif st == WANT_READ:
            self._set_writer(False)
            self._set_reader(True)
        elif st == WANT_WRITE:
            self._set_reader(False)
            self._set_writer(True)
        else:
            self._handshake_failed(self._error(st))

    def _handshake_timeout(self) -> None:
        self._timer = None
        self._handshake_failed(TimeoutError("TLS handshake timed out"))

    def _handshake_failed(self, exc: BaseException) -> None:
        self._release()
        self._finish_handshake(exc)

    def _finish_handshake(self, exc: BaseException | None) -> None:
        done, self._done = self._done, None
        if done is not None:
            done(exc)

    # --- reading -------------------------------------------------------------------------

    def _readable(self) -> None:
        """The socket's one read watch: the handshake, then the stream, then the input that
        is dropped after close_notify."""
        if self._t is None:
            self._drop_input()
        elif self._done is not None:
            self._handshake()
        else:
            self._read_ready()

    def _read_ready(self) -> None:
        t = self._t
        if t is None or not self._reading:
            return
        n = lib.eg_tls_read(t, _buf, READ_SIZE, _status)
        st = _status[0]
        if n:
            try:
                self._protocol.data_received(ffi.buffer(_buf, n)[:])
            except Exception as e:  # (as the loop's transports: the connection ends)
                self._fatal(e, "data_received")
                return
        if self._t is None or self._closing:
            return
        if st == WANT_READ:
            return
        if st == DONE:  # the buffer filled: more may wait inside OpenSSL
            self._loop.call_soon(self._read_ready)
        elif st == WANT_WRITE:  # (a key update to answer)
            self._read_wants_write = True
            self._set_writer(True)
        elif st in (CLOSED, EOF):
            self._reading = False
            try:
                keep_open = self._protocol.eof_received()
            except Exception as e:
                self._fatal(e, "eof_received")
                return
            if keep_open:
                self._set_reader(False)  # (level-triggered: the EOF would wake us again)
            else:
                self.close()
        else:
            self._fatal(self._error(st), None)

    def pause_reading(self) -> None:
        if self._reading and not self._closing:
            self._reading = False
            self._set_reader(False)

    def resume_reading(self) -> None:
        if not self._reading and not self._closing and self._t is not None:
            self._reading = True
            self._set_reader(True)
            self._loop.call_soon(self._read_ready)  # (OpenSSL may hold decrypted bytes)

    def is_reading(self) -> bool:
        return self._reading

    # --- writing -------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._t is None or not data:
            return
        if self._pending:
            self._pending += data
            self._maybe_pause_protocol()
            return
        n = lib.eg_tls_write(self._t, data if type(data) is bytes else ffi.from_buffer(data),
                             len(data), _status)
        if n == len(data):
            return
        st = _status[0]
        if st in (WANT_WRITE, WANT_READ):
            self._pending += memoryview(data)[n:]
            self._set_writer(True)
            self._maybe_pause_protocol()
        else:
            self._fatal(self._error(st), None)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def _write_ready(self) -> None:
        if self._t is None:
            return
        if self._done is not None:  # still in the handshake
            self._handshake()
            return
        if self._pending:
            n = lib.eg_tls_write(self._t, ffi.from_buffer(self._pending), len(self._pending),
                                 _status)
            del self._pending[:n]
            st = _status[0]
            if self._pending and st not in (WANT_WRITE, WANT_READ):
                self._fatal(self._error(st), None)
                return
        if self._read_wants_write:
            self._read_wants_write = False
            self._read_ready()
        if self._t is None or self._pending:
            return
        self._set_writer(False)
        self._maybe_resume_protocol()
        if self._closing:
            self._shutdown()

    def can_write_eof(self) -> bool:
        return False  # (TLS has no half-close)

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    def get_write_buffer_size(self) -> int:
        return len(self._pending)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = 65536 if high is None else high
        self._low = self._high // 4 if low is None else low
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if not self._protocol_paused and len(self._pending) > self._high:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and len(self._pending) <= self._low:
            self._protocol_paused = False
            self._protocol.resume_writing()

    # --- closing -------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Sends what is buffered, then close_notify, then closes."""
        if self._closing or self._t is None:
            return
        self._closing = True
        self._reading = False
        if self._pending:
            self._set_reader(False)  # (until the rest is sent; then input is dropped)
        else:
            self._shutdown()

    def abort(self) -> None:
        if self._t is None:
            return
        self._closing = True
        self._end(None)

    def _shutdown(self) -> None:
        """close_notify, then Envoy's delayed close: a FIN, and what the client still sends
        is read and dropped until it closes too or DELAYED_CLOSE passes. Closed at once with
        unread bytes, the socket would send a reset, which can destroy the answer (a GOAWAY,
        a 4xx) before the client reads it."""
        if self._t is not None:
            lib.eg_tls_shutdown(self._t)  # (best effort: a full socket loses the alert)
            lib.eg_tls_free(self._t)
            self._t = None
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._end(None)
            return
        self._set_writer(False)
        self._set_reader(True)  # (now with _t gone, what comes is dropped)
        self._timer = self._loop.call_later(DELAYED_CLOSE, self._release)
        self._loop.call_soon(self._protocol.connection_lost, None)

    def _drop_input(self) -> None:
        try:
            if self._sock.recv(65536):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._release()

    def _fatal(self, exc: Exception, where: str | None) -> None:
        if where is not None:
            self._loop.call_exception_handler({
                "message": f"exception in the protocol's {where}", "exception": exc,
                "transport": self, "protocol": self._protocol})
        self._closing = True
        self._end(exc)

    def _end(self, exc: Exception | None) -> None:
        self._release()
        self._loop.call_soon(self._protocol.connection_lost, exc)

    def _release(self) -> None:
        """Stops watching the socket, closes it and frees OpenSSL's connection."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._set_reader(False)
        self._set_writer(False)
        self._reading = False
        self._pending.clear()
        if self._t is not None:
            lib.eg_tls_free(self._t)
            self._t = None
        self._sock.close()

    # --- the rest of Transport -----------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        try:
            if name == "peername":
                return self._sock.getpeername()
            if name == "sockname":
                return self._sock.getsockname()
        except OSError:
            return default
        if name == "socket":
            return self._sock
        if name == "ssl_object":
            return TlsInfo(self)
        if name == "sslcontext":
            return self._ctx
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    # --- helpers -------------------------------------------------------------------------

    def _set_reader(self, on: bool) -> None:
        if on != self._reader:
            self._reader = on
            if on:
                self._loop.add_reader(self._fd, self._readable)
            else:
                self._loop.remove_reader(self._fd)

    def _set_writer(self, on: bool) -> None:
        if on != self._writer:
            self._writer = on
            if on:
                self._loop.add_writer(self._fd, self._write_ready)
            else:
                self._loop.remove_writer(self._fd)

    def _error(self, st: int) -> Exception:
        if st == EOF:
            return ConnectionResetError("the client closed the connection")
        if self._t is None:
            return ssl.SSLError("closed")
        lib.eg_tls_error(self._t, _err, 256)
        message = ffi.string(_err).decode("utf-8", "replace")
        errno = lib.eg_tls_errno(self._t)
        return OSError(errno, message) if errno else ssl.SSLError(message)
