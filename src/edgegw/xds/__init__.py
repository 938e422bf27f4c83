"""xDS: edgegw driven by a control plane, as Envoy is (``dynamic_resources`` with ``ads`` or
``api_config_source``).

- ``grpc``: one gRPC stream over a cluster's HTTP/2 pool (Envoy's ``envoy_grpc``);
- ``resources``: protobuf resources as the JSON edgegw's config model reads;
- ``sotw``: the state-of-the-world protocol of one resource type, without I/O;
- ``mux``: the streams (one ADS stream, or one per type), their reconnects and watchers.
"""
