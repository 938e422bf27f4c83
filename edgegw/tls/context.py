"""SSLContexts for both directions, built from Downstream/UpstreamTlsContext.

Downstream: one SSLContext per certificate, and the certificate is chosen by SNI before the
handshake (SAN exact, then wildcard, then the first certificate), as Envoy's default
certificate selector does. Upstream: the configured SNI, verification only when a
validation_context is given (Envoy's rule), SAN matching by match_typed_subject_alt_names.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass

from cryptography import x509

from .. import log
from ..config import model as m
from ..http.router import string_matcher
from .certs import CertPair, load_pair, read

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


def _versions(ctx: ssl.SSLContext, p: m.TlsParameters, default_min: ssl.TLSVersion,
              default_max: ssl.TLSVersion) -> None:
    lo = p.tls_minimum_protocol_version
    hi = p.tls_maximum_protocol_version
    ctx.minimum_version = _VERSIONS.get(lo, default_min)
    ctx.maximum_version = _VERSIONS.get(hi, default_max)
    if lo in ("TLSv1_0", "TLSv1_1"):
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")


def _alpn(configured: list[str]) -> list[str]:
    """We speak HTTP/1.1 only: offer it, and never offer a protocol we cannot serve."""
    return [p for p in configured if p == "http/1.1"] or ["http/1.1"]


@dataclass
class ServerCert:
    names: list[str]
    ctx: ssl.SSLContext
    pair: CertPair


class ServerTls:
    """The server side of one filter chain's DownstreamTlsContext."""

    def __init__(self, cfg: m.DownstreamTlsContext) -> None:
        common = cfg.common_tls_context
        self.certs: list[ServerCert] = []
        for c in common.tls_certificates:
            pair = load_pair(c.certificate_chain, c.private_key)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            _versions(ctx, common.tls_params, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)
            ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
            ctx.set_alpn_protocols(_alpn(common.alpn_protocols))
            _load_chain(ctx, pair)
            vc = common.validation_context
            if vc and vc.trusted_ca:
                ctx.load_verify_locations(cadata=read(vc.trusted_ca).decode("ascii"))
                ctx.verify_mode = (ssl.CERT_REQUIRED if cfg.require_client_certificate
                                   else ssl.CERT_OPTIONAL)
            self.certs.append(ServerCert(pair.dns_names(), ctx, pair))
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wild: dict[str, ssl.SSLContext] = {}
        for sc in self.certs:
            for n in sc.names:
                if n.startswith("*."):
                    self._wild.setdefault(n[1:], sc.ctx)
                else:
                    self._exact.setdefault(n, sc.ctx)

    def context_for(self, sni: str | None) -> ssl.SSLContext:
        """SAN exact match, then a wildcard one level up, then the first certificate."""
        if sni and len(self.certs) > 1:
            ctx = self._exact.get(sni)
            if ctx is not None:
                return ctx
            dot = sni.find(".")
            if dot > 0:
                ctx = self._wild.get(sni[dot:])
                if ctx is not None:
                    return ctx
        return self.certs[0].ctx


class ClientTls:
    """The client side of a cluster's UpstreamTlsContext."""

    def __init__(self, cfg: m.UpstreamTlsContext, cluster: str) -> None:
        common = cfg.common_tls_context
        self.sni = cfg.sni or None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        # Envoy's client side defaults to TLS 1.2 as its maximum; match it unless configured.
        _versions(ctx, common.tls_params, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)
        ctx.options |= ssl.OP_NO_COMPRESSION
        if common.alpn_protocols:
            ctx.set_alpn_protocols(_alpn(common.alpn_protocols))
        vc = common.validation_context
        if vc and vc.trusted_ca:
            ctx.load_verify_locations(cadata=read(vc.trusted_ca).decode("ascii"))
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            ctx.verify_mode = ssl.CERT_NONE
            _log.warning("cluster '%s': upstream TLS certificates are not verified (no "
                         "validation_context.trusted_ca), as in Envoy; set one to verify them",
                         cluster)
        for c in common.tls_certificates:
            _load_chain(ctx, load_pair(c.certificate_chain, c.private_key))
        self.ctx = ctx
        self.san_matchers = [
            (s.san_type, string_matcher(s.matcher))
            for s in (vc.match_typed_subject_alt_names if vc else [])
        ]

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
        kinds = {"DNS": x509.DNSName, "URI": x509.UniformResourceIdentifier,
                 "IP_ADDRESS": x509.IPAddress, "EMAIL": x509.RFC822Name}
        for kind, match in self.san_matchers:
            for v in san.get_values_for_type(kinds[kind]):  # type: ignore[type-var]
                if match(str(v)):
                    return None
        return "peer certificate subject alternative names do not match"
