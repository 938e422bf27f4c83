"""The HTTP filters before the router; importing this package registers each by its @type."""

from . import fault, local_ratelimit, rbac

__all__ = ["fault", "local_ratelimit", "rbac"]
