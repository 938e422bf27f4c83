"""The HTTP filters before the router; importing this package registers each by its @type."""

from . import (
    basic_auth,
    compressor,
    custom_response,
    ext_authz,
    fault,
    geoip,
    header_mutation,
    jwt_authn,
    local_ratelimit,
    rbac,
)

__all__ = ["basic_auth", "compressor", "custom_response", "ext_authz", "fault", "geoip", "header_mutation", "jwt_authn", "local_ratelimit", "rbac"]
