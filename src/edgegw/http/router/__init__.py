"""envoy.filters.http.router: the route table, the router filter and its upstream attempts."""
