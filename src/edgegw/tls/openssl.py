"""OpenSSL calls that Python's ``ssl`` does not offer, made on a context's SSL_CTX through
ctypes: the key-exchange group list, session tickets and session IDs' context."""

from __future__ import annotations

import _ssl
import ctypes
import ssl

lib = ctypes.CDLL(_ssl.__file__)
lib.SSL_CTX_get_options.restype = ctypes.c_uint64
lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
lib.SSL_CTX_ctrl.restype = ctypes.c_long
lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
lib.SSL_CTX_set_session_id_context.restype = ctypes.c_int
lib.SSL_CTX_set_session_id_context.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint]
lib.SSL_CTX_set_timeout.restype = ctypes.c_long
lib.SSL_CTX_set_timeout.argtypes = [ctypes.c_void_p, ctypes.c_long]


def ssl_ctx(ctx: ssl.SSLContext) -> int | None:
    """The context's SSL_CTX*: the first field after the object header, taken only when
    OpenSSL's options at that address are the context's own (else None)."""
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if ptr and lib.SSL_CTX_get_options(ptr) == ctx.options:
        return int(ptr)
    return None
