"""envoy.filters.http.compressor: upstream responses compressed as Envoy compresses them.

One filter per library (gzip through zlib, brotli, zstd), as in Envoy; the compressor filters
of a chain decide together, once per stream, which encoding the client prefers (q-values;
``*`` takes the first registered; ``identity`` or ``q=0`` refuse; ``choose_first`` wins a
tie). A response is compressed when it has a body, is long enough (``min_content_length``;
a response without a length counts as long enough), has a listed content type, carries no
``Cache-Control: no-transform``, no ``Content-Encoding``, no compressing
``Transfer-Encoding``, an ETag only if allowed, and a status not listed as uncompressible.
Then a strong ETag is dropped (a weak one kept), the length removed and
``Content-Encoding`` set; ``Vary: Accept-Encoding`` is added to any compressible response,
compressed or not. Every piece of body is flushed as it goes, so a stream is never held.
Stats: ``http.<prefix>.compressor.<library name>.<library>.response.*``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from ...config import model as m
from ...matchers import first_header
from ...stats import Counter, StatSet, Store
from ..filter import register

if TYPE_CHECKING:
    from ..codec import Headers
    from ..filter import FilterCallbacks

DEFAULT_TYPES = frozenset((
    "text/html", "text/plain", "text/css", "application/javascript", "application/x-javascript",
    "text/javascript", "text/x-javascript", "text/ecmascript", "text/js", "text/jscript",
    "text/x-js", "application/ecmascript", "application/x-json", "application/xml",
    "application/json", "image/svg+xml", "text/xml", "application/xhtml+xml"))
"""Envoy's default list."""
_STRATEGIES = {"DEFAULT_STRATEGY": zlib.Z_DEFAULT_STRATEGY, "FILTERED": zlib.Z_FILTERED,
               "HUFFMAN_ONLY": zlib.Z_HUFFMAN_ONLY, "RLE": zlib.Z_RLE, "FIXED": zlib.Z_FIXED}


class CompressorStats(StatSet):
    compressed: Counter
    not_compressed: Counter
    no_accept_header: Counter
    header_identity: Counter
    header_compressor_used: Counter
    header_compressor_overshadowed: Counter
    header_wildcard: Counter
    header_not_valid: Counter
    total_uncompressed_bytes: Counter
    total_compressed_bytes: Counter
    content_length_too_small: Counter
    not_compressed_etag: Counter


Step = Callable[[bytes, bool], bytes]
"""Compresses one piece of body; the last one finishes the stream."""


def _maker(lib: m.Gzip | m.Brotli | m.Zstd) -> tuple[str, Callable[[], Step]]:
    """The Content-Encoding a library makes, and a factory of its per-stream compressors."""
    if isinstance(lib, m.Gzip):
        level = m.GZIP_LEVELS[lib.compression_level]
        strategy = _STRATEGIES[lib.compression_strategy]

        def gzip() -> Step:
            z = zlib.compressobj(level, zlib.DEFLATED, 16 + lib.window_bits, lib.memory_level,
                                 strategy)
            return lambda data, last: z.compress(data) + z.flush(
                zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
        return "gzip", gzip
    if isinstance(lib, m.Brotli):
        import brotli

        mode = {"DEFAULT": brotli.MODE_GENERIC, "GENERIC": brotli.MODE_GENERIC,
                "TEXT": brotli.MODE_TEXT, "FONT": brotli.MODE_FONT}[lib.encoder_mode]

        def br() -> Step:
            c = brotli.Compressor(mode=mode, quality=lib.quality, lgwin=lib.window_bits,
                                  lgblock=lib.input_block_bits)
            return lambda data, last: (c.process(data) + c.finish()) if last else (
                c.process(data) + c.flush())
        return "br", br
    import zstandard

    params = zstandard.ZstdCompressor(level=lib.compression_level,
                                      write_checksum=lib.enable_checksum)

    def zstd() -> Step:
        z = params.compressobj()
        return lambda data, last: z.compress(data) + z.flush(
            zstandard.COMPRESSOBJ_FLUSH_FINISH if last else zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    return "zstd", zstd


class _Shared:
    """What the compressor filters of one stream share: who registered, and the choice."""

    def __init__(self) -> None:
        self.filters: list[CompressorFilter] = []
        self.choice: tuple[str, str] | None = None
        """(the encoding, why: used, identity, wildcard, not_valid), once decided."""


def _choose(accept: str, content_type: str, filters: list[CompressorFilter]
            ) -> tuple[str, str]:
    allowed: dict[str, int] = {}
    for f in filters:
        if content_type and f.types and content_type not in f.types:
            continue
        allowed.setdefault(f.encoding, len(allowed))
    pairs: list[tuple[str, float]] = []
    for token in accept.split(","):
        name, _, params = token.partition(";")
        name, q = name.strip(), 1.0
        if not name:
            continue
        key, eq, value = params.partition("=")
        if eq and key.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                continue
        pairs.append((name, q))
        if not q:
            allowed.pop(name, None)
    if not pairs or not allowed:
        return "identity", "not_valid"
    first = {f.encoding for f in filters if f.choose_first and f.encoding in allowed}
    choice, best = "identity", 0.0
    for name, q in pairs:
        if (name in allowed or name in ("identity", "*")) and (
                q > best or (q == best and q and name in first)):
            choice, best = name, q
    if not best:
        return "identity", "not_valid"
    if choice == "identity":
        return "identity", "identity"
    if choice == "*":
        return min(allowed, key=allowed.__getitem__), "wildcard"
    return choice, "used"


@register(m.Compressor)
class CompressorFilter:
    def __init__(self, cfg: m.Compressor, store: Store, hcm_prefix: str) -> None:
        lib = cfg.compressor_library
        self.encoding, self.make = _maker(lib.typed_config)
        resp = cfg.response_direction_config
        common = resp.common_config
        self.enabled = common.enabled.default_value
        self.min_length = common.min_content_length
        self.types = frozenset(t.lower() for t in common.content_type) or DEFAULT_TYPES
        self.no_etag = resp.disable_on_etag_header
        self.remove_accept = resp.remove_accept_encoding_header
        self.uncompressible = frozenset(resp.uncompressible_response_codes)
        self.choose_first = cfg.choose_first
        library = {"gzip": "gzip", "br": "brotli", "zstd": "zstd"}[self.encoding]
        self.stats = CompressorStats(
            store, f"http.{hcm_prefix}.compressor.{lib.name}.{library}.response.")

    def decode_headers(self, cb: FilterCallbacks, route_cfg: object) -> bool:
        if isinstance(route_cfg, m.CompressorPerRoute) and route_cfg.disabled:
            return True
        accept = first_header(cb.headers, b"accept-encoding")
        if self.enabled and self.remove_accept:
            cb.headers[:] = [h for h in cb.headers if h[0] != b"accept-encoding"]
        shared: _Shared = cb.filter_state.setdefault("compressors", _Shared())
        shared.filters.append(self)
        cb.add_response_transform(_Compress(self, shared, accept))
        return True


class _Compress:
    """One filter's work on one response."""

    def __init__(self, f: CompressorFilter, shared: _Shared, accept: bytes | None) -> None:
        self.f, self.shared, self.accept = f, shared, accept
        self.step: Step | None = None

    def _accepted(self, content_type: str) -> bool:
        f = self.f
        if self.accept is None:
            f.stats.no_accept_header.value += 1
            return False
        if self.shared.choice is None:
            self.shared.choice = _choose(self.accept.decode("latin-1"), content_type,
                                         self.shared.filters)
        encoding, why = self.shared.choice
        chosen = encoding == f.encoding
        if why == "used":
            counter = f.stats.header_compressor_used if chosen else \
                f.stats.header_compressor_overshadowed
        else:
            counter = getattr(f.stats, f"header_{why}")
        counter.value += 1
        return chosen

    def headers(self, status: int, headers: Headers, end_stream: bool) -> None:
        f = self.f
        length = first_header(headers, b"content-length")
        # (no length: the body comes chunked, as Envoy requires; never an upgrade's tunnel)
        long_enough = f.enabled and status >= 200 and (length is None or (
            length.isdigit() and int(length) >= f.min_length))
        if f.enabled and not long_enough:
            f.stats.content_length_too_small.value += 1
        ctype = (first_header(headers, b"content-type") or b"").split(b";")[0].strip().decode(
            "latin-1").lower()
        cache = (first_header(headers, b"cache-control") or b"").lower()
        etag = first_header(headers, b"etag")
        etag_ok = not (f.no_etag and etag is not None)
        if not etag_ok:
            f.stats.not_compressed_etag.value += 1
        compressible = long_enough and (not ctype or ctype in f.types) and \
            b"no-transform" not in [t.strip() for t in cache.split(b",")] and etag_ok and \
            first_header(headers, b"content-encoding") is None and status not in f.uncompressible
        te = [t.strip().lower() for t in (first_header(headers, b"transfer-encoding") or b"").split(
            b",")]
        if not end_stream and long_enough and self._accepted(ctype) and compressible and not (
                {f.encoding.encode(), b"gzip", b"deflate"} & set(te)):
            if etag is not None and len(etag) > 2 and not etag[:2].lower() == b"w/":
                headers[:] = [h for h in headers if h[0] != b"etag"]
            headers[:] = [h for h in headers if h[0] != b"content-length"]
            headers.append((b"content-encoding", f.encoding.encode()))
            f.stats.compressed.value += 1
            self.step = f.make()
        else:
            f.stats.not_compressed.value += 1
        if compressible:
            vary = first_header(headers, b"vary")
            if vary is None:
                headers.append((b"vary", b"Accept-Encoding"))
            elif b"accept-encoding" not in [t.strip().lower() for t in vary.split(b",")]:
                headers[:] = [(k, v + b", Accept-Encoding" if k == b"vary" else v)
                              for k, v in headers]

    def data(self, data: bytes, end_stream: bool) -> bytes:
        if self.step is None:
            return data
        stats = self.f.stats
        stats.total_uncompressed_bytes.value += len(data)
        out = self.step(data, end_stream)
        stats.total_compressed_bytes.value += len(out)
        if end_stream:
            self.step = None
        return out
