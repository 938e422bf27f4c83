"""What edgegw asks of an ACME server beyond the acme library's own calls: a new order that
names the certificate it replaces (RFC 9773's ``replaces``) and a profile, and a
certificate's ARI identifier. Imported only when ACME runs: the acme library is heavy."""

from __future__ import annotations

import base64
from typing import Any

import josepy as jose
from acme import client, crypto_util, messages
from cryptography import x509


class NewOrder(messages.NewOrder):
    """newOrder with RFC 9773's ``replaces``."""

    replaces: str | None = jose.field("replaces", omitempty=True)


def ari_id(cert: x509.Certificate) -> str:
    """RFC 9773's CertID: base64url(authority key identifier) "." base64url(serial, DER)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    serial = cert.serial_number
    der = serial.to_bytes((serial.bit_length() + 8) // 8, "big", signed=True)

    def b64(data: bytes | None) -> str:
        return base64.urlsafe_b64encode(data or b"").decode().rstrip("=")

    return f"{b64(aki.key_identifier)}.{b64(der)}"


def has_ari(acme: client.ClientV2) -> bool:
    return "renewalInfo" in acme.directory.to_partial_json()


def new_order(acme: client.ClientV2, csr_pem: bytes, profile: str | None,
              replaces: str | None) -> messages.OrderResource:
    """``ClientV2.new_order``, with ``replaces`` (sent only where the CA speaks ARI)."""
    csr = x509.load_pem_x509_csr(csr_pem)
    names, _ = crypto_util.get_identifiers_from_x509(csr.subject, csr.extensions)
    order = NewOrder(identifiers=[messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=n)
                                  for n in names],
                     profile=profile, replaces=replaces if has_ari(acme) else None)
    response = acme._post(acme.directory["newOrder"], order)  # noqa: SLF001 (the library's)
    body = messages.Order.from_json(response.json())
    authorizations = [acme._authzr_from_response(acme._post_as_get(url), uri=url)  # noqa: SLF001
                      for url in body.authorizations]
    return messages.OrderResource(body=body, uri=response.headers.get("Location"),
                                  authorizations=authorizations, csr_pem=csr_pem)


def registration(acme: client.ClientV2, key: jose.JWK, email: str,
                 eab: tuple[str, str] | None) -> Any:
    """A new account's request, with an external account binding (``kid``, base64url HMAC
    key) when the CA asks for one (ZeroSSL, Google, Sectigo)."""
    binding = messages.ExternalAccountBinding.from_data(
        key.public_key(), eab[0], eab[1], acme.directory) if eab is not None else None
    return messages.NewRegistration.from_data(email=email, terms_of_service_agreed=True,
                                              external_account_binding=binding)
