"""Layer 4: Envoy's tcp_proxy network filter (bytes to a cluster and back)."""
