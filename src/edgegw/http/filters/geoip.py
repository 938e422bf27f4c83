"""envoy.filters.http.geoip with the MaxMind provider: the client's address looked up in
MaxMind databases (GeoIP2, GeoLite2, read with MaxMind's own ``maxminddb``), and what is found
written to request headers, where RBAC (or the backend) reads it.

As measured on Envoy 1.40:
- the address is the one the connection manager settled on (PROXY protocol, XFF rules), or
  the one ``xff_config`` picks from x-forwarded-for, or the one in ``custom_header_config``'s
  header, falling back to the connection's where that is missing or not an address;
- a field found replaces the header; a field not found leaves it as the client sent it (so a
  policy on these headers removes them first: the sites file's ``countries`` does);
- strings as they are, numbers above 0 in decimal, booleans as ``true``/``false``;
- the country comes from the country database when one is set, else from the city one; the
  ASN from the ASN database, else the ISP one;
- stats: ``http.<prefix>.geoip.total``, ``http.<prefix>.maxmind.<db>.{total,hit}`` (and
  ``city_db.lookup_error`` for an address the city database does not hold), and per file
  ``maxmind.<db>.<path>.{db_reload_success,db_reload_error}``.
A database file replaced on disk is reopened at the next lookup (its change is seen within a
second); one that does not open keeps the previous one serving and counts a reload error.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import maxminddb

from ... import log
from ...config import model as m
from ...stats import Counter, Store
from ..filter import register
from ..headers import ip_or_none, xff_address

if TYPE_CHECKING:
    from ..filter import FilterCallbacks

_log = log.get("http")

_FIELDS: dict[str, tuple[str | int, ...]] = {  # field: where it is in a record
    "country": ("country", "iso_code"), "city": ("city", "names", "en"),
    "region": ("subdivisions", 0, "iso_code"), "asn": ("autonomous_system_number",),
    "is_anon": ("is_anonymous",), "anon": ("is_anonymous",),
    "anon_vpn": ("is_anonymous_vpn",), "anon_hosting": ("is_hosting_provider",),
    "anon_tor": ("is_tor_exit_node",), "anon_proxy": ("is_public_proxy",), "isp": ("isp",),
    "apple_private_relay": ("is_apple_private_relay",)}
_RECHECK = 1.0
"""Seconds between two looks at a database file's signature."""


def _signature(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


class _Database:
    """One database file, reopened when the file is replaced."""

    def __init__(self, kind: str, path: str, store: Store, prefix: str) -> None:
        self.kind = kind
        self.path = path
        self.reader = maxminddb.open_database(path)  # a bad file is a config error
        self.signature = _signature(path)
        self.checked = time.monotonic()
        self.failing = False
        own = f"maxmind.{kind}.{path}."
        self.reload_success = store.counter(own + "db_reload_success")
        self.reload_error = store.counter(own + "db_reload_error")
        self.total = store.counter(f"{prefix}maxmind.{kind}.total")
        self.hit = store.counter(f"{prefix}maxmind.{kind}.hit")
        self.lookup_error = store.counter(f"{prefix}maxmind.{kind}.lookup_error") \
            if kind == "city_db" else None

    def get(self, ip: str) -> Any:
        now = time.monotonic()
        if now - self.checked >= _RECHECK:
            self.checked = now
            self._maybe_reload()
        try:
            return self.reader.get(ip)
        except ValueError:  # an IPv6 address in an IPv4 database
            return None

    def _maybe_reload(self) -> None:
        try:
            signature = _signature(self.path)
            if signature == self.signature:
                return
            reader = maxminddb.open_database(self.path)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as e:
            if not self.failing:
                _log.error("cannot reopen the MaxMind database %s: %s; the previous one "
                           "serves", self.path, e)
            self.failing = True
            self.reload_error.value += 1
            return
        self.failing = False
        self.reader.close()
        self.reader = reader
        self.signature = signature
        self.reload_success.value += 1
        _log.info("reopened the MaxMind database %s", self.path)


def _value(record: Any, path: tuple[Any, ...]) -> str:
    for key in path:
        if isinstance(key, int):
            if not isinstance(record, list) or len(record) <= key:
                return ""
        elif not isinstance(record, dict) or key not in record:
            return ""
        record = record[key]
    if isinstance(record, bool):
        return "true" if record else "false"
    if isinstance(record, int):
        return str(record) if record > 0 else ""
    return record if isinstance(record, str) else ""


@register(m.Geoip)
class GeoipFilter:
    def __init__(self, cfg: m.Geoip, store: Store, hcm_prefix: str) -> None:
        provider = cfg.provider.typed_config
        headers = provider.common_provider_config.headers
        prefix = f"http.{hcm_prefix}."
        self.total: Counter = store.counter(prefix + "geoip.total")
        self.header = cfg.custom_header_config.header_name.lower().encode("latin-1") \
            if cfg.custom_header_config else None
        self.hops = cfg.xff_config.xff_num_trusted_hops if cfg.xff_config else 0
        files = {"city_db_path": provider.city_db_path,
                 "country_db_path": provider.country_db_path,
                 "asn_db_path": provider.asn_db_path, "anon_db_path": provider.anon_db_path,
                 "isp_db_path": provider.isp_db_path}
        opened: dict[str, _Database] = {}
        plan: dict[str, list[tuple[bytes, tuple[Any, ...]]]] = {}
        for field, paths in m.GEO_DATABASES.items():
            name = getattr(headers, field, "")  # (geo_field_keys has no is_anon)
            if not name:
                continue
            attr = next(p for p in paths if files[p])
            kind = attr.removesuffix("_path")
            if kind not in opened:
                opened[kind] = _Database(kind, files[attr], store, prefix)
            plan.setdefault(kind, []).append((name.lower().encode("latin-1"), _FIELDS[field]))
        self.lookups = [(opened[kind], fields) for kind, fields in plan.items()]
        """Each database read, with the headers it fills."""

    def _client(self, cb: FilterCallbacks) -> str:
        ip: str | None = None
        if self.header is not None:
            value = next((v for k, v in cb.headers if k == self.header), None)
            ip = ip_or_none(value.decode("latin-1").strip()) if value is not None else None
        elif self.hops:
            ip = xff_address(cb.headers, self.hops)
        return ip or cb.info.remote_ip

    def decode_headers(self, cb: FilterCallbacks, route_cfg: object) -> bool:
        ip = self._client(cb)
        for db, fields in self.lookups:
            record = db.get(ip)
            db.total.value += 1
            found = [(name, v) for name, path in fields if (v := _value(record, path))]
            if found:
                db.hit.value += 1
                names = {name for name, _ in found}
                cb.headers[:] = [kv for kv in cb.headers if kv[0] not in names]
                cb.headers.extend((name, v.encode()) for name, v in found)
            elif db.lookup_error is not None:
                db.lookup_error.value += 1
        self.total.value += 1
        return True
