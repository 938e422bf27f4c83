/* edgegw's binding of nghttp2: one session per HTTP/2 connection, without I/O.
 *
 * Python calls in a few times per read or write, never the other way: nghttp2's callbacks
 * append events to a byte arena that Python parses after each call (one call per read, where a
 * callback into Python per header would cost more than the parsing it saves). An event is a
 * 12-byte head (type, flags, two spare bytes, stream id, payload length; little-endian) and
 * its payload. Header blocks travel both ways as "name\0value\0name\0value": HTTP/2 allows no
 * NUL in a field (RFC 9113 section 8.2.1), so Python splits a block with one call.
 *
 * Response and request bodies wait here, per stream, for the peer's flow-control window:
 * nghttp2 takes them through a data provider as its windows allow.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <nghttp2/nghttp2.h>

enum {
    EV_HEADERS = 1, /* flags: 1 END_STREAM */
    EV_DATA = 2,
    EV_END = 3,     /* END_STREAM on a DATA frame */
    EV_EMPTY = 4,   /* a DATA frame with neither payload nor END_STREAM */
    EV_RST = 5,     /* payload: the error code (u32) */
    EV_WINDOW = 6,
    EV_PRIORITY = 7,
    EV_GOAWAY = 8,  /* payload: last stream id, error code (u32 each) */
    EV_CLOSE = 9,   /* payload: the error code (u32) */
    EV_SETTINGS = 10,
    EV_OVERFLOW = 11, /* a header block past the limits: its stream is reset */
    EV_SENT_END = 12, /* our END_STREAM went out */
    EV_INVALID = 13,  /* a frame nghttp2 refused; payload: nghttp2's error code (i32) */
};

typedef struct {
    uint8_t *p;
    size_t len, cap;
} buf_t;

static int buf_reserve(buf_t *b, size_t n) {
    if (b->len + n <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n) cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_add(buf_t *b, const uint8_t *data, size_t n) {
    if (buf_reserve(b, n)) return -1;
    if (n) memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

typedef struct chunk {
    struct chunk *next;
    size_t len, off;
    uint8_t data[];
} chunk;

/* One stream's outgoing body; the session keeps them in a list, as nghttp2 frees its streams
 * without a word at the end. */
typedef struct ostream {
    struct ostream *prev, *next;
    int32_t sid;
    chunk *head, *tail;
    size_t pending;
    int eof, deferred;
    nghttp2_nv *trailers;
    size_t ntrailers;
    uint8_t *trailer_block;
} ostream;

typedef struct {
    nghttp2_session *s;
    ostream *bodies;
    buf_t events, out, block;
    uint32_t max_header_bytes, max_headers;
    uint32_t header_bytes, header_count;
    int overflow;
    uint32_t frames, control; /* frames (and RST_STREAM, SETTINGS, PING among them) sent */
    uint32_t resets;          /* RST_STREAM frames sent */
} eg_session;

static int event(eg_session *g, uint8_t type, uint8_t flags, int32_t sid, const uint8_t *payload,
                 uint32_t len) {
    uint8_t head[12];
    head[0] = type;
    head[1] = flags;
    head[2] = head[3] = 0;
    memcpy(head + 4, &sid, 4);
    memcpy(head + 8, &len, 4);
    if (buf_reserve(&g->events, 12 + len)) return NGHTTP2_ERR_CALLBACK_FAILURE;
    buf_add(&g->events, head, 12);
    buf_add(&g->events, payload, len);
    return 0;
}

static int event_u32(eg_session *g, uint8_t type, int32_t sid, uint32_t a) {
    return event(g, type, 0, sid, (const uint8_t *)&a, 4);
}

static void ostream_free(eg_session *g, ostream *o) {
    chunk *c = o->head;
    if (o->prev) o->prev->next = o->next; else g->bodies = o->next;
    if (o->next) o->next->prev = o->prev;
    while (c) {
        chunk *n = c->next;
        free(c);
        c = n;
    }
    free(o->trailers);
    free(o->trailer_block);
    free(o);
}

/* --- nghttp2's callbacks ------------------------------------------------------------------ */

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *u) {
    eg_session *g = u;
    (void)s;
    (void)f;
    g->block.len = 0;
    g->header_bytes = g->header_count = 0;
    g->overflow = 0;
    return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *u) {
    eg_session *g = u;
    (void)s;
    (void)flags;
    g->header_bytes += nlen + vlen;
    g->header_count += 1;
    /* The count allows for the pseudo-headers: Python checks the regular headers exactly. */
    if (g->header_bytes > g->max_header_bytes || g->header_count > g->max_headers + 8) {
        if (!g->overflow) {
            g->overflow = 1;
            event(g, EV_OVERFLOW, 0, f->hd.stream_id, NULL, 0);
        }
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets the stream */
    }
    if (g->block.len && buf_add(&g->block, (const uint8_t *)"", 1)) return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (buf_reserve(&g->block, nlen + vlen + 1)) return NGHTTP2_ERR_CALLBACK_FAILURE;
    buf_add(&g->block, name, nlen);
    buf_add(&g->block, (const uint8_t *)"", 1);
    buf_add(&g->block, value, vlen);
    return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *u) {
    eg_session *g = u;
    int32_t sid = f->hd.stream_id;
    int end = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    (void)s;
    switch (f->hd.type) {
    case NGHTTP2_HEADERS:
        return event(g, EV_HEADERS, end, sid, g->block.p, (uint32_t)g->block.len);
    case NGHTTP2_DATA:
        if (end) return event(g, EV_END, 0, sid, NULL, 0);
        if (f->hd.length == 0) return event(g, EV_EMPTY, 0, sid, NULL, 0);
        return 0;
    case NGHTTP2_RST_STREAM:
        return event_u32(g, EV_RST, sid, f->rst_stream.error_code);
    case NGHTTP2_WINDOW_UPDATE:
        return event(g, EV_WINDOW, 0, sid, NULL, 0);
    case NGHTTP2_PRIORITY:
        return event(g, EV_PRIORITY, 0, sid, NULL, 0);
    case NGHTTP2_SETTINGS:
        if (f->hd.flags & NGHTTP2_FLAG_ACK) return 0;
        return event(g, EV_SETTINGS, 0, 0, NULL, 0);
    case NGHTTP2_GOAWAY: {
        uint32_t p[2] = {(uint32_t)f->goaway.last_stream_id, f->goaway.error_code};
        return event(g, EV_GOAWAY, 0, 0, (const uint8_t *)p, 8);
    }
    }
    return 0;
}

static int on_invalid_frame_recv(nghttp2_session *s, const nghttp2_frame *f, int error, void *u) {
    (void)s;
    return event(u, EV_INVALID, 0, f->hd.stream_id, (const uint8_t *)&error, 4);
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data,
                         size_t len, void *u) {
    (void)s;
    (void)flags;
    return event(u, EV_DATA, 0, sid, data, (uint32_t)len);
}

static int on_stream_close(nghttp2_session *s, int32_t sid, uint32_t code, void *u) {
    ostream *o = nghttp2_session_get_stream_user_data(s, sid);
    if (o) {
        nghttp2_session_set_stream_user_data(s, sid, NULL);
        ostream_free(u, o);
    }
    return event_u32(u, EV_CLOSE, sid, code);
}

static int on_frame_send(nghttp2_session *s, const nghttp2_frame *f, void *u) {
    eg_session *g = u;
    (void)s;
    g->frames += 1;
    if (f->hd.type == NGHTTP2_RST_STREAM) g->resets += 1;
    if (f->hd.type == NGHTTP2_RST_STREAM || f->hd.type == NGHTTP2_SETTINGS
        || f->hd.type == NGHTTP2_PING)
        g->control += 1;
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA)
        && (f->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return event(g, EV_SENT_END, 0, f->hd.stream_id, NULL, 0);
    return 0;
}

static ssize_t read_body(nghttp2_session *s, int32_t sid, uint8_t *dst, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *u) {
    ostream *o = src->ptr;
    size_t n = 0;
    (void)u;
    while (o->head && n < length) {
        chunk *c = o->head;
        size_t take = c->len - c->off;
        if (take > length - n) take = length - n;
        memcpy(dst + n, c->data + c->off, take);
        c->off += take;
        n += take;
        if (c->off == c->len) {
            o->head = c->next;
            if (!o->head) o->tail = NULL;
            free(c);
        }
    }
    o->pending -= n;
    if (!o->head) {
        if (o->eof) {
            *flags |= NGHTTP2_DATA_FLAG_EOF;
            if (o->trailers) {
                *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
                int rv = nghttp2_submit_trailer(s, sid, o->trailers, o->ntrailers);
                if (rv) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
            }
        } else if (n == 0) {
            o->deferred = 1;
            return NGHTTP2_ERR_DEFERRED;
        }
    }
    return (ssize_t)n;
}

/* --- what Python calls ------------------------------------------------------------------- */

static void eg_free(eg_session *g) {
    if (!g) return;
    nghttp2_session_del(g->s);
    while (g->bodies) ostream_free(g, g->bodies);
    free(g->events.p);
    free(g->out.p);
    free(g->block.p);
    free(g);
}

static eg_session *eg_new(int server, uint32_t max_header_bytes, uint32_t max_headers,
                          uint32_t max_concurrent_streams, uint32_t stream_window,
                          uint32_t connection_window, uint32_t hpack_table_size) {
    eg_session *g = calloc(1, sizeof *g);
    nghttp2_session_callbacks *cb;
    nghttp2_option *opt;
    if (!g) return NULL;
    g->max_header_bytes = max_header_bytes;
    g->max_headers = max_headers;
    if (nghttp2_session_callbacks_new(&cb)) {
        free(g);
        return NULL;
    }
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_no_closed_streams(opt, 1);
    nghttp2_option_set_max_send_header_block_length(opt, 1 << 24);
    int rv = server ? nghttp2_session_server_new2(&g->s, cb, g, opt)
                    : nghttp2_session_client_new2(&g->s, cb, g, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    if (rv) {
        free(g);
        return NULL;
    }
    nghttp2_settings_entry iv[4];
    size_t n = 0;
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, stream_window};
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, hpack_table_size};
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, max_header_bytes};
    if (server)
        iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS,
                                           max_concurrent_streams};
    else
        iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_ENABLE_PUSH, 0};
    if (nghttp2_submit_settings(g->s, NGHTTP2_FLAG_NONE, iv, n)
        || (connection_window > 65535
            && nghttp2_session_set_local_window_size(g->s, NGHTTP2_FLAG_NONE, 0,
                                                     (int32_t)connection_window))) {
        eg_free(g);
        return NULL;
    }
    return g;
}

/* Parses a block into name-value pairs; returns how many, or -1 when it is not one. */
static long parse_block(const uint8_t *block, size_t len, nghttp2_nv **out) {
    size_t fields = 1, i;
    for (i = 0; i < len; i++)
        if (block[i] == 0) fields++;
    if (len == 0) fields = 0;
    if (fields % 2) return -1;
    nghttp2_nv *nv = calloc(fields / 2 + 1, sizeof *nv);
    if (!nv) return -1;
    const uint8_t *p = block, *end = block + len;
    for (i = 0; i < fields / 2; i++) {
        const uint8_t *z = memchr(p, 0, (size_t)(end - p));
        nv[i].name = (uint8_t *)p;
        nv[i].namelen = (size_t)(z - p);
        p = z + 1;
        z = memchr(p, 0, (size_t)(end - p));
        if (!z) z = end;
        nv[i].value = (uint8_t *)p;
        nv[i].valuelen = (size_t)(z - p);
        nv[i].flags = NGHTTP2_NV_FLAG_NONE;
        p = z + 1;
    }
    *out = nv;
    return (long)(fields / 2);
}

static ostream *ostream_new(eg_session *g) {
    ostream *o = calloc(1, sizeof(ostream));
    if (!o) return NULL;
    o->next = g->bodies;
    if (g->bodies) g->bodies->prev = o;
    g->bodies = o;
    return o;
}

/* Response headers (server) or a request (client: sid 0; returns the new stream's id). With
 * end_stream false, a body follows through eg_data and eg_trailers. */
static int32_t eg_headers(eg_session *g, int32_t sid, const char *cblock, size_t len,
                          int end_stream, int informational) {
    const uint8_t *block = (const uint8_t *)cblock;
    nghttp2_nv *nv;
    long n = parse_block(block, len, &nv);
    int32_t rv;
    if (n < 0) return NGHTTP2_ERR_INVALID_ARGUMENT;
    if (informational) {
        rv = nghttp2_submit_headers(g->s, NGHTTP2_FLAG_NONE, sid, NULL, nv, (size_t)n, NULL);
        free(nv);
        return rv;
    }
    ostream *o = NULL;
    nghttp2_data_provider prd, *pp = NULL;
    if (!end_stream) {
        o = ostream_new(g);
        if (!o) {
            free(nv);
            return NGHTTP2_ERR_NOMEM;
        }
        prd.source.ptr = o;
        prd.read_callback = read_body;
        pp = &prd;
    }
    if (sid == 0) {
        rv = nghttp2_submit_request(g->s, NULL, nv, (size_t)n, pp, o);
    } else {
        rv = nghttp2_submit_response(g->s, sid, nv, (size_t)n, pp);
        if (rv == 0 && o) nghttp2_session_set_stream_user_data(g->s, sid, o);
    }
    free(nv);
    if (rv < 0 && o) ostream_free(g, o);
    else if (o) o->sid = sid ? sid : rv;
    return rv;
}

/* A stream's body: nghttp2 knows a request's stream only once its HEADERS are sent. */
static ostream *body_of(eg_session *g, int32_t sid) {
    ostream *o = nghttp2_session_get_stream_user_data(g->s, sid);
    for (ostream *b = g->bodies; !o && b; b = b->next)
        if (b->sid == sid) o = b;
    return o;
}

/* More of a stream's body; eof: it is whole. Returns the bytes still waiting, or -1 where the
 * stream has no body to take. */
static long eg_data(eg_session *g, int32_t sid, const char *data, size_t len, int eof) {
    ostream *o = body_of(g, sid);
    if (!o || o->eof) return -1;
    if (len) {
        chunk *c = malloc(sizeof *c + len);
        if (!c) return -1;
        c->next = NULL;
        c->len = len;
        c->off = 0;
        memcpy(c->data, data, len);
        if (o->tail) o->tail->next = c; else o->head = c;
        o->tail = c;
        o->pending += len;
    }
    o->eof = eof;
    if (o->deferred && (len || eof)) {
        o->deferred = 0;
        nghttp2_session_resume_data(g->s, sid);
    }
    return (long)o->pending;
}

static int eg_trailers(eg_session *g, int32_t sid, const char *block, size_t len) {
    ostream *o = body_of(g, sid);
    if (!o || o->eof) return -1;
    uint8_t *copy = malloc(len + 1);
    if (!copy) return -1;
    memcpy(copy, block, len);
    long n = parse_block(copy, len, &o->trailers);
    if (n < 0) {
        free(copy);
        o->trailers = NULL;
        return -1;
    }
    o->trailer_block = copy;
    o->ntrailers = (size_t)n;
    if (n == 0) { /* no field: the body's end ends the stream */
        free(o->trailers);
        o->trailers = NULL;
    }
    return (int)eg_data(g, sid, NULL, 0, 1) < 0 ? -1 : 0;
}

static long eg_pending(eg_session *g, int32_t sid) {
    ostream *o = body_of(g, sid);
    return o ? (long)o->pending : 0;
}

static int eg_recv(eg_session *g, const char *data, size_t len) {
    ssize_t rv = nghttp2_session_mem_recv(g->s, (const uint8_t *)data, len);
    return rv < 0 ? (int)rv : 0;
}

/* Everything nghttp2 has to send, into g->out (counted in g->frames and g->control). */
static int eg_send(eg_session *g) {
    for (;;) {
        const uint8_t *p;
        ssize_t n = nghttp2_session_mem_send(g->s, &p);
        if (n < 0) return (int)n;
        if (n == 0) return 0;
        if (buf_add(&g->out, p, (size_t)n)) return NGHTTP2_ERR_NOMEM;
    }
}

static int eg_alive(eg_session *g) {
    return nghttp2_session_want_read(g->s) || nghttp2_session_want_write(g->s);
}

static int eg_rst(eg_session *g, int32_t sid, uint32_t code) {
    return nghttp2_submit_rst_stream(g->s, NGHTTP2_FLAG_NONE, sid, code);
}

/* Credits a stream's (and the connection's) window with bytes the reader took. */
static int eg_consume(eg_session *g, int32_t sid, size_t n) {
    return nghttp2_session_consume(g->s, sid, n);
}

/* A graceful GOAWAY naming the last stream taken; returns its id. */
static int32_t eg_goaway(eg_session *g) {
    int32_t last = nghttp2_session_get_last_proc_stream_id(g->s);
    int rv = nghttp2_submit_goaway(g->s, NGHTTP2_FLAG_NONE, last, NGHTTP2_NO_ERROR, NULL, 0);
    return rv ? rv : last;
}

static uint32_t eg_peer_max_streams(eg_session *g) {
    return nghttp2_session_get_remote_settings(g->s, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
}

static const char *eg_version(void) { return nghttp2_version(0)->version_str; }
