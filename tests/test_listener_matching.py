"""ClientHello inspection and filter chain choice (Envoy's tls_inspector and chain matching)."""

from __future__ import annotations

import ssl

import pytest

from edgegw.config.model import FilterChainMatch
from edgegw.listener.filter_chain import FilterChainIndex
from edgegw.listener.tls_inspector import NeedMore, inspect


def client_hello(sni: str | None, alpn: list[str] | None = None,
                 versions: tuple[ssl.TLSVersion, ssl.TLSVersion] | None = None) -> bytes:
    """The first flight of a real OpenSSL client, captured through memory BIOs."""
    ctx = ssl.create_default_context()
    if versions:
        ctx.minimum_version, ctx.maximum_version = versions
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    if sni is None:
        ctx.check_hostname = False
        obj = ctx.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_sni_and_alpn_are_read() -> None:
    hello = inspect(client_hello("A.Example.com", ["h2", "http/1.1"]))
    assert hello.tls and hello.server_name == "a.example.com"
    assert hello.alpn == ("h2", "http/1.1")


@pytest.mark.parametrize(("lo", "hi", "speaks_12_13"), [
    (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3, True),
    (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3, True),
    (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_2, True),
    (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1, False),
    (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1, False),
])
def test_versions_the_client_speaks(lo: ssl.TLSVersion, hi: ssl.TLSVersion,
                                    speaks_12_13: bool) -> None:
    hello = inspect(client_hello("a.example.com", versions=(lo, hi)))
    assert hello.offers(0x0303, 0x0304) is speaks_12_13
    assert hello.offers(0x0304, 0x0304) is (hi == ssl.TLSVersion.TLSv1_3)


def test_grease_is_no_version() -> None:
    from edgegw.listener.tls_inspector import _versions

    assert _versions(bytes([6, 0x7A, 0x7A, 3, 4, 3, 3])) == (0x0304, 0x0303)


def test_no_sni() -> None:
    hello = inspect(client_hello(None))
    assert hello.tls and hello.server_name is None


def test_partial_hello_asks_for_more_at_every_cut() -> None:
    data = client_hello("a.example.com")
    for cut in (1, 2, 5, 10, len(data) // 2, len(data) - 1):
        with pytest.raises(NeedMore):
            inspect(data[:cut])
    assert inspect(data).server_name == "a.example.com"


def test_hello_split_across_records() -> None:
    data = client_hello("split.example.com")
    body = data[5:]
    half = len(body) // 2
    records = (b"\x16\x03\x01" + half.to_bytes(2, "big") + body[:half]
               + b"\x16\x03\x01" + (len(body) - half).to_bytes(2, "big") + body[half:])
    with pytest.raises(NeedMore):
        inspect(records[: 5 + half + 3])
    assert inspect(records).server_name == "split.example.com"


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", b"\x00" * 10, b"\x16\x01\x00\x00\x00",
                                  b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00"])
def test_not_tls(data: bytes) -> None:
    assert not inspect(data).tls


def chains(*specs: dict) -> FilterChainIndex[str]:
    return FilterChainIndex([(FilterChainMatch(**s), f"c{i}") for i, s in enumerate(specs)])


def test_exact_then_longest_wildcard_then_catch_all() -> None:
    idx = chains({"server_names": ["www.example.com"]}, {"server_names": ["*.example.com"]},
                 {"server_names": ["*.com"]}, {})
    assert idx.find("www.example.com", "tls") == "c0"
    assert idx.find("api.example.com", "tls") == "c1"
    assert idx.find("deep.api.example.com", "tls") == "c1"
    assert idx.find("other.com", "tls") == "c2"
    assert idx.find("example.org", "tls") == "c3"
    assert idx.find(None, "tls") == "c3"


def test_no_match_without_catch_all_and_default_chain() -> None:
    idx = chains({"server_names": ["a.com"]})
    assert idx.find("b.com", "tls") is None
    assert idx.find(None, "raw_buffer") is None
    idx = FilterChainIndex([(FilterChainMatch(server_names=["a.com"]), "a")], default="dflt")
    assert idx.find("b.com", "tls") == "dflt"


def test_transport_protocol_and_alpn_narrowing() -> None:
    idx = chains({"transport_protocol": "tls"}, {"transport_protocol": "raw_buffer"},
                 {"transport_protocol": "tls", "application_protocols": ["h2"]})
    assert idx.find(None, "raw_buffer") == "c1"
    assert idx.find(None, "tls", ["h2", "http/1.1"]) == "c2"
    assert idx.find(None, "tls", ["http/1.1"]) == "c0"
    # Narrowing never goes back: an exact server name that fails the transport step loses.
    idx = chains({"server_names": ["a.com"], "transport_protocol": "raw_buffer"}, {})
    assert idx.find("a.com", "tls") is None
