"""SSLContexts for both directions, built from Downstream/UpstreamTlsContext.

Downstream: one SSLContext per certificate, and the certificate is chosen by SNI before the
handshake (SAN exact, then wildcard, then the first certificate), as Envoy's default
certificate selector does. Upstream: the configured SNI, verification only when a trusted CA
is given (Envoy's rule), SAN matching by match_typed_subject_alt_names.

Certificates and CAs may come inline, from files, or from SDS secrets; when a secret rotates,
the contexts are rebuilt and swapped in for new connections, while open ones keep theirs.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from .. import log
from ..config import model as m
from ..config.datasource import path_of, read
from ..matchers import string_matcher
from ..stats import Counter, StatSet
from . import tickets
from .certs import CertPair, load_pair
from .openssl import lib as openssl
from .openssl import ssl_ctx
from .sds import SecretManager, Subscription, XdsSecret
from .secrets import CaSecret, CertSecret, signature_of
from .tickets import TicketKeys, read_key

_log = log.get("secret")

_VERSIONS = {
    "TLSv1_0": ssl.TLSVersion.TLSv1,
    "TLSv1_1": ssl.TLSVersion.TLSv1_1,
    "TLSv1_2": ssl.TLSVersion.TLSv1_2,
    "TLSv1_3": ssl.TLSVersion.TLSv1_3,
}


def _load_chain(ctx: ssl.SSLContext, pair: CertPair) -> None:
    """Loads PEM bytes through an anonymous in-memory file: no key ever touches the disk."""
    fd = os.memfd_create("edgegw-cert", os.MFD_CLOEXEC)
    try:
        os.write(fd, pair.chain_pem + b"\n" + pair.key_pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


ENVOY_CIPHERS = ("[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]",
                 "[ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305]",
                 "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384")
"""Envoy's default TLS 1.2 suites, both directions: AEAD with forward secrecy only (no CBC,
so no LUCKY13). TLS 1.3 suites are all AEAD and not configurable, as in Envoy."""
ENVOY_CURVES = ("X25519", "P-256")
_PRIORITIZE_CHACHA = 0x00200000
"""SSL_OP_PRIORITIZE_CHACHA: OpenSSL's stand-in for BoringSSL's ``[AES|CHACHA]`` equal
preference: a client that puts ChaCha20 first (no AES hardware) gets it."""


def _params(ctx: ssl.SSLContext, p: m.TlsParameters, default_min: ssl.TLSVersion,
            default_max: ssl.TLSVersion) -> None:
    """tls_params with Envoy's defaults: versions, TLS 1.2 cipher suites, ECDH groups."""
    lo = p.tls_minimum_protocol_version
    ctx.minimum_version = _VERSIONS.get(lo, default_min)
    ctx.maximum_version = _VERSIONS.get(p.tls_maximum_protocol_version, default_max)
    suites = p.cipher_suites or ENVOY_CIPHERS
    ciphers = ":".join(n for entry in suites for n in m.cipher_names(entry))
    if lo in ("TLSv1_0", "TLSv1_1"):
        ciphers += ":@SECLEVEL=0"  # OpenSSL 3 refuses TLS 1.0/1.1 at any higher level
    ctx.set_ciphers(ciphers)
    if any("CHACHA20" in entry for entry in suites):
        ctx.options |= _PRIORITIZE_CHACHA
    set_groups(ctx, [m.CURVES[c] for c in p.ecdh_curves or ENVOY_CURVES])


_SET_GROUPS_LIST = 92  # SSL_CTRL_SET_GROUPS_LIST


def set_groups(ctx: ssl.SSLContext, groups: list[str]) -> None:
    """The key-exchange groups, in order. Python 3.11's ssl can set one group only
    (set_ecdh_curve), so OpenSSL's SSL_CTX_set1_groups_list is called on the context's
    SSL_CTX; one group is set the supported way if that cannot be reached."""
    ptr = ssl_ctx(ctx)
    if ptr is not None:
        if openssl.SSL_CTX_ctrl(ptr, _SET_GROUPS_LIST, 0, ":".join(groups).encode()) == 1:
            return
        raise ssl.SSLError(f"OpenSSL refused the groups {':'.join(groups)}")
    _log.warning("cannot set the group list %s on this Python; offering %s only",
                 ":".join(groups), groups[0])
    ctx.set_ecdh_curve("prime256v1" if groups[0] == "P-256" else groups[0])


def _alpn(configured: list[str]) -> list[str]:
    """The configured protocols we can serve (h2, http/1.1), never one we cannot."""
    return [p for p in configured if p in ("h2", "http/1.1")] or ["http/1.1"]


class SslStats(StatSet):
    """``<listener or cluster>.ssl.*``: Envoy's ALL_SSL_STATS, all made at start as Envoy
    makes them. A failed verification counts as its reason, not as ``connection_error``."""

    connection_error: Counter
    handshake: Counter
    session_reused: Counter
    no_certificate: Counter
    fail_verify_no_cert: Counter
    fail_verify_error: Counter
    fail_verify_san: Counter
    fail_verify_cert_hash: Counter
    ocsp_staple_failed: Counter
    ocsp_staple_omitted: Counter
    ocsp_staple_responses: Counter
    ocsp_staple_requests: Counter


class _Sources:
    """The certificates and trust of one CommonTlsContext: inline/file ones and SDS ones."""

    def __init__(self, common: m.CommonTlsContext, secrets: SecretManager | None,
                 on_update: Callable[[], None], cert_dir: str | None = None) -> None:
        self.common, self.on_update = common, on_update
        self.static_pairs = [load_pair(c.certificate_chain, c.private_key)
                             for c in common.tls_certificates]
        self.static_paths = [path_of(c.certificate_chain) for c in common.tls_certificates]
        self.cert_subs: list[Subscription] = []
        self.ca_sub: Subscription | None = None
        self.static_ca: bytes | None = None
        self.static_ca_path = ""
        self.static_san: list[m.SubjectAltNameMatcher] = []
        vc = common.validation_context
        if vc is not None:
            self.static_san = list(vc.match_typed_subject_alt_names)
            if vc.trusted_ca is not None:
                self.static_ca = read(vc.trusted_ca)
                self.static_ca_path = path_of(vc.trusted_ca)
        self.files = [ds.filename for c in common.tls_certificates
                      for ds in (c.certificate_chain, c.private_key) if ds.filename] + \
            ([vc.trusted_ca.filename] if vc and vc.trusted_ca and vc.trusted_ca.filename else [])
        self.signature = signature_of(self.files)
        """The files read above, as they were: a reload keeps these sources while they hold."""
        if common.tls_certificate_sds_secret_configs or common.validation_context_sds_secret_config:
            if secrets is None:
                raise ValueError("SDS secrets need a secret manager")
            self.cert_subs = [secrets.subscribe(c)
                              for c in common.tls_certificate_sds_secret_configs]
            if common.validation_context_sds_secret_config is not None:
                self.ca_sub = secrets.subscribe(common.validation_context_sds_secret_config)
            for sub in self._subs():
                sub.callbacks.append(on_update)
        self.cert_dir = None
        if cert_dir is not None and secrets is not None:
            self.cert_dir = secrets.directory(cert_dir)
            self.cert_dir.callbacks.append(on_update)

    def _subs(self) -> list[Subscription]:
        return [*self.cert_subs, *([self.ca_sub] if self.ca_sub else [])]

    def from_control_plane(self) -> list[XdsSecret]:
        """Its secrets that a control plane sends: what its owner warms on."""
        return [s for s in self._subs() if isinstance(s, XdsSecret)]

    def current(self, secrets: SecretManager | None) -> bool:
        """Whether a new config's ``secrets`` give these sources the same secrets, and the
        files read are unchanged: then what was built from them can be kept."""
        common = self.common
        if self.cert_dir is not None or signature_of(self.files) != self.signature:
            return False
        if not self._subs():
            return True
        vc_sds = common.validation_context_sds_secret_config
        return secrets is not None and self.cert_subs == [
            secrets.subscribe(c) for c in common.tls_certificate_sds_secret_configs] and \
            self.ca_sub is (secrets.subscribe(vc_sds) if vc_sds is not None else None)

    def release(self) -> None:
        """No more updates: what was built from these sources is retired."""
        lists = [sub.callbacks for sub in self._subs()]
        if self.cert_dir is not None:
            lists.append(self.cert_dir.callbacks)
        for callbacks in lists:
            if self.on_update in callbacks:
                callbacks.remove(self.on_update)

    def pairs(self) -> list[tuple[CertPair, str]]:
        """Configured certificates first, then the drop-in directory's. A configured file
        that lives in the drop-in directory is served as the directory holds it now, so it
        rotates with the others (edgegw-only; what the sites file relies on)."""
        dropped = {os.path.normpath(path): (pair, path) for pair, path in self.cert_dir.pairs()} \
            if self.cert_dir is not None else {}
        out = [dropped.pop(os.path.normpath(path), (pair, path))
               for pair, path in zip(self.static_pairs, self.static_paths, strict=True)]
        for sub in self.cert_subs:
            if isinstance(sub.value, CertSecret):
                out.append((sub.value.pair, sub.value.chain_path))
        out += dropped.values()
        return out

    def trust(self) -> tuple[bytes | None, str, list[m.SubjectAltNameMatcher]]:
        if self.ca_sub is not None and isinstance(self.ca_sub.value, CaSecret):
            v = self.ca_sub.value
            return v.pem, v.path, list(v.san_matchers)
        return self.static_ca, self.static_ca_path, self.static_san


@dataclass
class ServerCert:
    names: list[str]
    ctx: ssl.SSLContext
    pair: CertPair
    path: str

    @functools.cached_property
    def host_names(self) -> tuple[frozenset[str], frozenset[str]]:
        """The names as strict SNI/Host checks them: exact ones, and wildcards' suffixes."""
        lower = [n.lower() for n in self.names]
        return (frozenset(n for n in lower if not n.startswith("*.")),
                frozenset(n[1:] for n in lower if n.startswith("*.")))

    @functools.cached_property
    def versions(self) -> tuple[int, int]:
        """The context's lowest and highest TLS versions (each read of ``ssl``'s properties
        builds an enum; the listener checks them per connection)."""
        return self.ctx.minimum_version, self.ctx.maximum_version


class ServerTls:
    """The server side of one filter chain's DownstreamTlsContext."""

    def __init__(self, cfg: m.DownstreamTlsContext, secrets: SecretManager | None = None,
                 updates: Counter | None = None, cert_dir: str | None = None) -> None:
        self.cfg = cfg
        self.updates = updates
        self.tickets = secrets.tickets if secrets is not None else TicketKeys()
        if cfg.session_ticket_keys is not None:
            self.tickets = TicketKeys(configured=read_key(cfg.session_ticket_keys.keys[0]))
        self.sources = _Sources(cfg.common_tls_context, secrets, self._updated, cert_dir)
        self.certs: list[ServerCert] = []
        self._exact: dict[str, ServerCert] = {}
        self._wild: dict[str, ServerCert] = {}
        self.ca_path = ""
        self.ca_pem: bytes | None = None
        self._build()

    def _updated(self) -> None:
        try:
            self._build()
        except (ssl.SSLError, ValueError) as e:
            _log.error("could not rebuild a TLS context after a secret update, keeping the "
                       "previous one: %s", e)
            return
        if self.updates is not None:
            self.updates.value += 1

    def _build(self) -> None:
        common = self.cfg.common_tls_context
        ca_pem, ca_path, _ = self.sources.trust()
        certs = []
        for pair, path in self.sources.pairs():
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            _params(ctx, common.tls_params, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)
            ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
            if self.cfg.disable_stateless_session_resumption:
                ctx.options |= ssl.OP_NO_TICKET
                ctx.num_tickets = 0  # (TLS 1.3: OpenSSL would issue stateful tickets instead)
            ctx.set_alpn_protocols(_alpn(common.alpn_protocols))
            _load_chain(ctx, pair)
            if ca_pem:
                ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
                ctx.verify_mode = (ssl.CERT_REQUIRED if self.cfg.require_client_certificate
                                   else ssl.CERT_OPTIONAL)
            certs.append(ServerCert(pair.dns_names(), ctx, pair, path))
        identity = b"".join([*(p.chain_pem for p, _ in self.sources.pairs()), ca_pem or b"",
                             self.cfg.model_dump_json(exclude={"common_tls_context"}).encode()])
        for sc in certs:
            tickets.configure(sc.ctx, identity, self._ticket_key(),
                              not self.cfg.disable_stateful_session_resumption,
                              self.cfg.session_timeout)
        exact: dict[str, ServerCert] = {}
        wild: dict[str, ServerCert] = {}
        for sc in certs:
            for n in sc.names:
                if n.startswith("*."):
                    wild.setdefault(n[1:], sc)
                else:
                    exact.setdefault(n, sc)
        self.certs, self._exact, self._wild = certs, exact, wild
        self.ca_pem, self.ca_path = ca_pem, ca_path

    def pairs(self) -> list[tuple[CertPair, str]]:
        return [(sc.pair, sc.path) for sc in self.certs]

    def _ticket_key(self) -> bytes | None:
        return None if self.cfg.disable_stateless_session_resumption else \
            self.tickets.current()

    def rotate_tickets(self) -> None:
        """The ticket key of the period that begins now (every worker changes together)."""
        key = self._ticket_key()
        if key is not None:
            for sc in self.certs:
                tickets.rotate(sc.ctx, key)

    def close(self) -> None:
        self.sources.release()

    def cert_for(self, sni: str | None) -> ServerCert:
        """SAN exact match, then a wildcard one level up, then the first certificate."""
        certs = self.certs
        if sni and len(certs) > 1:
            sc = self._exact.get(sni)
            if sc is not None:
                return sc
            dot = sni.find(".")
            if dot > 0:
                sc = self._wild.get(sni[dot:])
                if sc is not None:
                    return sc
        return certs[0]


class ClientTls:
    """The client side of a cluster's UpstreamTlsContext."""

    def __init__(self, cfg: m.UpstreamTlsContext, cluster: str,
                 secrets: SecretManager | None = None, updates: Counter | None = None,
                 alpn: list[str] | None = None) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.alpn = alpn
        """What the cluster's protocol offers when the context names no ALPN (Envoy's
        override: ``h2`` for an HTTP/2 cluster)."""
        self.sni = cfg.sni or None
        self.updates = updates
        self.sources = _Sources(cfg.common_tls_context, secrets, self._updated)
        self.ctx: ssl.SSLContext = None  # type: ignore[assignment]
        self.san_matchers: list[tuple[str, Callable[[str], bool]]] = []
        self.ca_path = ""
        self.ca_pem: bytes | None = None
        self.client_certs: list[tuple[CertPair, str]] = []
        self._build()
        if self.ca_pem is None:
            _log.warning("cluster '%s': upstream TLS certificates are not verified (no "
                         "trusted_ca), as in Envoy; set one to verify them", cluster)

    def _updated(self) -> None:
        try:
            self._build()
        except (ssl.SSLError, ValueError) as e:
            _log.error("cluster '%s': could not rebuild upstream TLS after a secret update, "
                       "keeping the previous one: %s", self.cluster, e)
            return
        if self.updates is not None:
            self.updates.value += 1

    def _build(self) -> None:
        common = self.cfg.common_tls_context
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        # Envoy's client side defaults to TLS 1.2 as its maximum; match it unless configured.
        _params(ctx, common.tls_params, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)
        ctx.options |= ssl.OP_NO_COMPRESSION
        if common.alpn_protocols:
            ctx.set_alpn_protocols(_alpn(common.alpn_protocols))
        elif self.alpn:
            ctx.set_alpn_protocols(self.alpn)
        ca_pem, ca_path, san = self.sources.trust()
        if ca_pem:
            ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            ctx.verify_mode = ssl.CERT_NONE
        pairs = self.sources.pairs()
        for pair, _ in pairs:
            _load_chain(ctx, pair)
        self.ctx = ctx
        self.ca_pem, self.ca_path = ca_pem, ca_path
        self.client_certs = pairs
        self.san_matchers = [(s.san_type, string_matcher(s.matcher)) for s in san]

    def pairs(self) -> list[tuple[CertPair, str]]:
        return self.client_certs

    def current(self, secrets: SecretManager | None) -> bool:
        """Still what a new config with these ``secrets`` would build (same settings
        assumed): a cluster carried over keeps it."""
        return self.sources.current(secrets)

    def close(self) -> None:
        self.sources.release()

    def check_peer(self, sslobj: ssl.SSLObject | None) -> str | None:
        """None when the peer's SANs satisfy match_typed_subject_alt_names, else the reason."""
        if not self.san_matchers:
            return None
        der = sslobj.getpeercert(binary_form=True) if sslobj else None
        if not der:
            return "no peer certificate"
        try:
            san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return "peer certificate has no subject alternative names"
        kinds: dict[str, Any] = {"DNS": x509.DNSName, "URI": x509.UniformResourceIdentifier,
                 "IP_ADDRESS": x509.IPAddress, "EMAIL": x509.RFC822Name}
        for kind, match in self.san_matchers:
            for v in san.get_values_for_type(kinds[kind]):
                if match(str(v)):
                    return None
        return "peer certificate subject alternative names do not match"
