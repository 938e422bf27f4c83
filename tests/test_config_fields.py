"""No field is silently ignored: every field the config model accepts is read by the runtime,
or it is listed here with the reason it needs no reading."""

from __future__ import annotations

import re
import typing

from pydantic import BaseModel

from edgegw.config import model as m

from .conftest import PACKAGE, ROOT

NEEDS_NO_READING = {
    "RegexMatcher.google_re2": "an empty marker in Envoy; it holds no setting",
    "RuntimeFeatureFlag.runtime_key": "no runtime layer, so Envoy's default_value applies",
    "Gzip.chunk_size": "Envoy's output buffer size; edgegw passes each flushed piece whole",
    "Brotli.chunk_size": "Envoy's output buffer size; edgegw passes each flushed piece whole",
    "Zstd.chunk_size": "Envoy's output buffer size; edgegw passes each flushed piece whole",
    "Brotli.disable_literal_context_modeling": "refused when true: the brotli binding has no "
                                               "such switch",
    "RuntimeUInt32.runtime_key": "no runtime layer, so Envoy's default_value applies",
    "RuntimeFractionalPercent.runtime_key": "no runtime layer, so Envoy's default_value "
                                            "applies, as in Envoy without a runtime",
    "WeightedCluster.total_weight": "checked at load against the weights",
    "RetryPolicy.retry_on": "parsed at load into the model's retry conditions",
    "RouteConfiguration.validate_clusters": "only true is accepted: clusters are checked",
    "AccessLogSink.log_format": "read through the model's format property",
    "InternalAddressConfig.unix_sockets": "edgegw listens on no Unix socket",
    "RingHashLbConfig.hash_function": "only XX_HASH is accepted",
    "OutlierDetection.split_external_local_origin_errors": "only false is accepted",
    "CircuitBreakers.thresholds": "read through the model's default property",
    "Thresholds.priority": "read through the model's default property",
    "Cluster.typed_extension_protocol_options": "read through the model's http_options",
    "UpstreamHttpProtocolOptions.explicit_http_config": "read through the model's "
                                                        "http2_options",
    "UpstreamHttpProtocolOptions.auto_config": "read through the model's auto_http",
    "ExplicitHttpConfig.http_protocol_options": "only the empty (default) options",
    "AutoHttpConfig.http_protocol_options": "only the empty (default) options",
    "OverloadManager.resource_monitors": "read through the model's max_connections",
    "DownstreamConnectionsConfig.max_active_downstream_connections": "read through the "
                                                                     "model's max_connections",
    "PassThroughTlvs.match_type": "read through the model's keeps()",
    "BufferSettings.pack_as_bytes": "for the gRPC service mode; over HTTP Envoy ignores it too",
    "PassThroughTlvs.tlv_type": "read through the model's keeps()",
    "CommonGeoipProviderConfig.geo_field_keys": "read through the model's headers property",
    "CommonGeoipProviderConfig.geo_headers_to_add": "read through the model's headers "
                                                    "property",
    "NetworkRbac.enforcement_type": "only ONE_TIME_ON_FIRST_BYTE is accepted",
    "ExtAuthz.transport_api_version": "only V3 is accepted (it shapes gRPC checks only)",
    "Locality.zone": "a name: read by zone-aware routing only, whose settings edgegw "
                     "refuses (locality weighting goes by the endpoint group); region too, "
                     "whose name the geoip filter's field shares",
    "Locality.sub_zone": "as zone",
    "Cluster.ignore_health_on_host_removal": "only true, what edgegw always does, is accepted",
    "Policy.typed_extension_config": "read through LoadBalancingPolicy's chosen property",
    "HeaderMutation.most_specific_header_mutations_wins": "it orders Envoy's several levels "
        "of per-route mutations; edgegw applies the most specific one only",
    "FilterConfig.is_optional": "it lets Envoy skip a per-route config of a type it does not "
                                "know; one edgegw does not know is refused either way",
    "ApiConfigSource.transport_api_version": "only V3 (AUTO means V3 in Envoy 1.40)",
    "ConfigSource.resource_api_version": "only V3 (AUTO means V3 in Envoy 1.40)",
    "ConfigSource.initial_fetch_timeout": "read through the model's fetch_timeout",
    "OverloadManager.refresh_interval": "the connection limit is checked at each accept, as "
                                        "Envoy's proactive monitor is; nothing is sampled",
}


def _models(annotation: typing.Any) -> typing.Iterator[type[BaseModel]]:
    for arg in typing.get_args(annotation):
        yield from _models(arg)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation


def accepted_fields() -> list[str]:
    seen: set[type[BaseModel]] = set()
    out: list[str] = []

    def walk(cls: type[BaseModel]) -> None:
        if cls in seen:
            return
        seen.add(cls)
        for name, f in cls.model_fields.items():
            out.append(f"{cls.__name__}.{name}")
            for sub in _models(f.annotation):
                walk(sub)

    for root in (m.Bootstrap, m.Router, m.HTTPFault, m.LocalRateLimit):
        walk(root)
    return out


def test_every_accepted_field_is_read_by_the_runtime_or_needs_no_reading() -> None:
    model = PACKAGE / "config" / "model"
    sites = PACKAGE / "sites"  # writes configs: it names fields without reading them
    runtime = "\n".join(p.read_text() for p in (PACKAGE).rglob("*.py")
                        if p.parent not in (model, sites))
    unread = [f for f in accepted_fields()
              if not re.search(rf"\.{f.split('.')[1]}\b|[\"']{f.split('.')[1]}[\"']", runtime)]
    assert sorted(set(unread) - set(NEEDS_NO_READING)) == []
    assert sorted(set(NEEDS_NO_READING) - set(unread)) == []  # the list stays exact
    assert len(accepted_fields()) > 200


def test_the_configuration_reference_is_generated_from_the_models() -> None:
    """docs/reference.md is what the models say today: a field added, removed or changed in
    a model without regenerating it fails here."""
    from edgegw.config.reference import render
    from edgegw.sites.reference import SECTIONS

    assert (ROOT / "docs" / "reference.md").read_text() == render(SECTIONS), (
        "regenerate it: python -m edgegw.sites.reference > docs/reference.md")
