"""Builds ``_nghttp2``, the binding of libnghttp2 the native HTTP/2 codec runs on (cffi's API
mode: compiled against the installed headers when the wheel is built, never in the tree).
``setup.py`` builds it where ``nghttp2/nghttp2.h`` is found; without it the h2 codec serves."""

from __future__ import annotations

import os

from cffi import FFI

CDEF = """
typedef struct { uint8_t *p; size_t len; ...; } buf_t;
typedef struct { buf_t events; buf_t out; uint32_t frames; uint32_t control; uint32_t resets; ...; } eg_session;
#define NGHTTP2_ERR_HTTP_HEADER ...
#define NGHTTP2_ERR_FLOODED ...
#define NGHTTP2_ERR_HTTP_MESSAGING ...
#define NGHTTP2_NO_ERROR ...
#define NGHTTP2_PROTOCOL_ERROR ...
#define NGHTTP2_INTERNAL_ERROR ...
#define NGHTTP2_REFUSED_STREAM ...
#define NGHTTP2_CANCEL ...

eg_session *eg_new(int server, uint32_t max_header_bytes, uint32_t max_headers,
                   uint32_t max_concurrent_streams, uint32_t stream_window,
                   uint32_t connection_window, uint32_t hpack_table_size);
void eg_free(eg_session *g);
int32_t eg_headers(eg_session *g, int32_t sid, const char *block, size_t len, int end_stream,
                   int informational);
long eg_data(eg_session *g, int32_t sid, const char *data, size_t len, int eof);
int eg_trailers(eg_session *g, int32_t sid, const char *block, size_t len);
long eg_pending(eg_session *g, int32_t sid);
int eg_recv(eg_session *g, const char *data, size_t len);
int eg_send(eg_session *g);
int eg_alive(eg_session *g);
int eg_rst(eg_session *g, int32_t sid, uint32_t code);
int eg_consume(eg_session *g, int32_t sid, size_t n);
int32_t eg_goaway(eg_session *g);
uint32_t eg_peer_max_streams(eg_session *g);
const char *eg_version(void);
"""



def builder() -> FFI:
    """The binding's builder: the declarations above over the shim's C source."""
    ffi = FFI()
    ffi.cdef(CDEF)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "nghttp2_shim.c")) as f:
        ffi.set_source("edgegw.http.codec.http2._nghttp2", f.read(), libraries=["nghttp2"],
                       extra_compile_args=["-O2"])
    return ffi
