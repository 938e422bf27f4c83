"""Envoy's cluster manager: clusters and hosts, load balancing, health checking, outlier
detection and the connection pools."""
