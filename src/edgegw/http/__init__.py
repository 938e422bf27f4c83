"""Envoy's http_connection_manager: downstream connections, streams, routing and the router's
upstream requests."""
