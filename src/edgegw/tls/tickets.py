"""TLS session resumption on a server context: ticket keys, session IDs' context, lifetime.

One Envoy process's threads share one SSL_CTX, so a ticket one worker thread issued resumes on
any other. edgegw's workers are processes, each with its own contexts: left alone, OpenSSL
gives each a random ticket key, and a client that lands on another worker pays a full
handshake (measured: half the resumptions lost under ``--concurrency 2``). So the ticket key
is derived from one master secret that the supervisor makes at start and its workers read
(a file in its private folder), and from the current 12-hour period: every worker derives
the same key at the same time, rotation needs no message, and tickets older than a period
or two stop resuming. ``session_ticket_keys`` (80-byte keys, Envoy's format) replace the
derived key: the first one encrypts and decrypts (OpenSSL takes one key without a ticket
callback; Envoy also decrypts with the others).

A ticket is bound to its filter chain: each context gets a session ID context made from its
certificates and settings, so a session from one chain never resumes on another, as in
Envoy.

Python's ``ssl`` exposes none of this, so OpenSSL is called on the context's SSL_CTX through
ctypes (as ``set_groups`` does).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import ssl
import time

from ..config import model as m
from ..config.datasource import DataSourceError, read
from .openssl import lib, ssl_ctx

TICKET_KEY_LEN = 80
"""Envoy's (and OpenSSL's) ticket key: 16 bytes name, 32 HMAC secret, 32 AES key."""
ROTATION = 12 * 3600.0
MASTER_FILE = "session-ticket-master"

_SET_TICKET_KEYS = 59  # SSL_CTRL_SET_TLSEXT_TICKET_KEYS
_SET_SESS_CACHE_MODE = 44  # SSL_CTRL_SET_SESS_CACHE_MODE
_SESS_CACHE_OFF = 0


def read_key(ds: m.DataSource) -> bytes:
    """A ``session_ticket_keys`` entry, checked as Envoy checks it."""
    key = read(ds)
    if len(key) != TICKET_KEY_LEN:
        raise DataSourceError(f"Incorrect TLS session ticket key length. Length {len(key)}, "
                              f"expected length {TICKET_KEY_LEN}.")
    return key


class TicketKeys:
    """The key every worker encrypts and decrypts tickets with now."""

    def __init__(self, master: bytes | None = None, configured: bytes | None = None) -> None:
        self.master = master or os.urandom(32)
        self.configured = configured

    def current(self, now: float | None = None) -> bytes:
        if self.configured is not None:
            return self.configured
        period = int((time.time() if now is None else now) // ROTATION)
        out, block = b"", b""
        for i in range(1, 4):  # HKDF-Expand (RFC 5869), SHA-256, 80 bytes
            block = hmac.new(self.master, block + b"edgegw ticket key %d" % period + bytes([i]),
                             hashlib.sha256).digest()
            out += block
        return out[:TICKET_KEY_LEN]

    @staticmethod
    def next_rotation(now: float | None = None) -> float:
        now = time.time() if now is None else now
        return (now // ROTATION + 1) * ROTATION - now


def shared_master(admin_socket: str | None, supervisor_folder: str | None = None) -> bytes:
    """The master secret: made by the supervisor in its private folder (``supervisor_folder``),
    read by its workers beside their admin socket; a process alone makes its own."""
    if supervisor_folder is not None:
        master = os.urandom(32)
        fd = os.open(os.path.join(supervisor_folder, MASTER_FILE),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(master)
        return master
    if admin_socket:
        try:
            with open(os.path.join(os.path.dirname(admin_socket), MASTER_FILE), "rb") as f:
                return f.read()
        except OSError:
            pass
    return os.urandom(32)


def configure(ctx: ssl.SSLContext, identity: bytes, key: bytes | None, stateful: bool,
              timeout: float | None) -> None:
    """Resumption on one server context: its ticket key (None: tickets are off), whether
    sessions are cached by ID, their lifetime, and the session ID context ``identity``
    (the chain's: another chain's sessions do not resume here)."""
    ptr = ssl_ctx(ctx)
    if ptr is None:
        raise ssl.SSLError("cannot reach OpenSSL's context to set session resumption")
    sid = hashlib.sha256(identity).digest()
    if lib.SSL_CTX_set_session_id_context(ptr, sid, len(sid)) != 1:
        raise ssl.SSLError("OpenSSL refused the session ID context")
    if key is not None and lib.SSL_CTX_ctrl(ptr, _SET_TICKET_KEYS, len(key), key) != 1:
        raise ssl.SSLError("OpenSSL refused the session ticket key")
    if not stateful:
        lib.SSL_CTX_ctrl(ptr, _SET_SESS_CACHE_MODE, _SESS_CACHE_OFF, None)
    if timeout is not None:
        lib.SSL_CTX_set_timeout(ptr, int(timeout))


def rotate(ctx: ssl.SSLContext, key: bytes) -> None:
    ptr = ssl_ctx(ctx)
    if ptr is not None:
        lib.SSL_CTX_ctrl(ptr, _SET_TICKET_KEYS, len(key), key)
