"""Builds ``_openssl``, the binding the downstream TLS transport drives OpenSSL through (cffi's
API mode: compiled against the installed headers when the wheel is built, never in the tree).
``setup.py`` builds it where ``openssl/ssl.h`` is found; without it the event loop's own TLS
layer serves."""

from __future__ import annotations

import os

from cffi import FFI

CDEF = """
typedef struct ssl_ctx_st SSL_CTX;
typedef struct { ...; } eg_tls;
#define EG_DONE ...
#define EG_WANT_READ ...
#define EG_WANT_WRITE ...
#define EG_CLOSED ...
#define EG_EOF ...
#define EG_FAILED ...

eg_tls *eg_tls_new(SSL_CTX *ctx, int fd);
void eg_tls_free(eg_tls *t);
int eg_tls_handshake(eg_tls *t);
size_t eg_tls_read(eg_tls *t, char *buf, size_t cap, int *status);
size_t eg_tls_write(eg_tls *t, const char *data, size_t len, int *status);
int eg_tls_pending(eg_tls *t);
int eg_tls_shutdown(eg_tls *t);
void eg_tls_error(eg_tls *t, char *buf, size_t cap);
int eg_tls_errno(eg_tls *t);
int eg_tls_peer_der(eg_tls *t, unsigned char *buf, int cap);
const unsigned char *eg_tls_alpn(eg_tls *t, unsigned int *len);
int eg_tls_session_reused(eg_tls *t);
const char *eg_tls_version(eg_tls *t);
unsigned long eg_openssl_version(void);
"""


def builder() -> FFI:
    """The binding's builder: the declarations above over the shim's C source."""
    ffi = FFI()
    ffi.cdef(CDEF)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "openssl_shim.c")) as f:
        ffi.set_source("edgegw.tls._openssl", f.read(), libraries=["ssl", "crypto"],
                       extra_compile_args=["-O2"])
    return ffi
