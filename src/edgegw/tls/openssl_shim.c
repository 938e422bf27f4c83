/* OpenSSL driven on a connection's socket: the downstream TLS transport's C half.
 *
 * One eg_tls per connection. Each call does all it can before the socket would block (a
 * handshake step, every record readable now, every byte writable now) and says why it
 * stopped, so that Python crosses into C once per readiness event, not once per record. */

#include <errno.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/* Why a call stopped. */
#define EG_DONE 0        /* finished (or the read buffer is full: call again) */
#define EG_WANT_READ 1
#define EG_WANT_WRITE 2
#define EG_CLOSED 3       /* the peer's close_notify */
#define EG_EOF 4          /* the socket ended without close_notify */
#define EG_FAILED 5       /* a TLS or socket error (eg_tls_error says which) */

typedef struct {
    SSL *ssl;
    unsigned long err;
    int sys_errno;
} eg_tls;

eg_tls *eg_tls_new(SSL_CTX *ctx, int fd)
{
    eg_tls *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->ssl = SSL_new(ctx);
    if (t->ssl == NULL || SSL_set_fd(t->ssl, fd) != 1) {
        SSL_free(t->ssl);
        free(t);
        return NULL;
    }
    SSL_set_accept_state(t->ssl);
    /* a write returns once a record is out, and is retried with the rest from wherever
     * Python holds it */
    SSL_set_mode(t->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* one recv() takes what the socket has, not a record's header and then its body */
    SSL_set_read_ahead(t->ssl, 1);
    return t;
}

void eg_tls_free(eg_tls *t)
{
    SSL_free(t->ssl);
    free(t);
}

static int why(eg_tls *t, int ret)
{
    switch (SSL_get_error(t->ssl, ret)) {
    case SSL_ERROR_WANT_READ:
        return EG_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return EG_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:
        return EG_CLOSED;
    case SSL_ERROR_SYSCALL:
        t->err = ERR_peek_last_error();
        t->sys_errno = errno;
        return t->err == 0 && t->sys_errno == 0 ? EG_EOF : EG_FAILED;
    default:
        t->err = ERR_peek_last_error();
        t->sys_errno = 0;
#ifdef SSL_R_UNEXPECTED_EOF_WHILE_READING
        if (ERR_GET_REASON(t->err) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
            return EG_EOF;
#endif
        return EG_FAILED;
    }
}

static void clear(void)
{
    ERR_clear_error();
    errno = 0;
}

int eg_tls_handshake(eg_tls *t)
{
    clear();
    int ret = SSL_do_handshake(t->ssl);
    return ret == 1 ? EG_DONE : why(t, ret);
}

/* Reads records until OpenSSL holds no more of what it read or `cap` bytes are in `buf`.
 * Once its buffer is empty the socket is not read again (that recv() would mostly say
 * EAGAIN): the loop's readiness says when more came. */
size_t eg_tls_read(eg_tls *t, char *buf, size_t cap, int *status)
{
    size_t got = 0, n = 0;
    clear();
    while (got < cap) {
        if (SSL_read_ex(t->ssl, buf + got, cap - got, &n) != 1) {
            *status = why(t, 0);
            return got;
        }
        got += n;
        if (!SSL_has_pending(t->ssl)) {
            *status = EG_WANT_READ;
            return got;
        }
    }
    *status = EG_DONE;
    return got;
}

/* Whether OpenSSL holds bytes it read from the socket (after the handshake: the client's
 * first request, read ahead with its Finished). */
int eg_tls_pending(eg_tls *t)
{
    return SSL_has_pending(t->ssl);
}

/* Writes until all of `data` is out or the socket is full. */
size_t eg_tls_write(eg_tls *t, const char *data, size_t len, int *status)
{
    size_t put = 0, n = 0;
    clear();
    while (put < len) {
        if (SSL_write_ex(t->ssl, data + put, len - put, &n) != 1) {
            *status = why(t, 0);
            return put;
        }
        put += n;
    }
    *status = EG_DONE;
    return put;
}

/* Sends close_notify (once; the peer's answer is not awaited, as Envoy). */
int eg_tls_shutdown(eg_tls *t)
{
    clear();
    int ret = SSL_shutdown(t->ssl);
    return ret >= 0 ? EG_DONE : why(t, ret);
}

/* Why the last call failed, as Python's ssl words it: "[SSL: LIB_REASON] reason". */
void eg_tls_error(eg_tls *t, char *buf, size_t cap)
{
    if (t->err == 0) {
        snprintf(buf, cap, "%s", t->sys_errno ? strerror(t->sys_errno) : "connection ended");
        return;
    }
    const char *reason = ERR_reason_error_string(t->err);
    const char *lib = ERR_lib_error_string(t->err);
    snprintf(buf, cap, "[%s] %s", lib ? lib : "SSL", reason ? reason : "unknown error");
}

int eg_tls_errno(eg_tls *t)
{
    return t->sys_errno;
}

/* The peer's certificate, DER-encoded: its length, written to `buf` when it fits
 * (0: no certificate). */
int eg_tls_peer_der(eg_tls *t, unsigned char *buf, int cap)
{
    X509 *cert = SSL_get0_peer_certificate(t->ssl);
    if (cert == NULL)
        return 0;
    int len = i2d_X509(cert, NULL);
    if (len > 0 && len <= cap) {
        unsigned char *p = buf;
        i2d_X509(cert, &p);
    }
    return len;
}

const unsigned char *eg_tls_alpn(eg_tls *t, unsigned int *len)
{
    const unsigned char *data = NULL;
    SSL_get0_alpn_selected(t->ssl, &data, len);
    return data;
}

int eg_tls_session_reused(eg_tls *t)
{
    return SSL_session_reused(t->ssl);
}

const char *eg_tls_version(eg_tls *t)
{
    return SSL_get_version(t->ssl);
}

unsigned long eg_openssl_version(void)
{
    return OpenSSL_version_num();
}
