"""xDS: edgegw driven by a control plane, as Envoy is (``dynamic_resources`` with ``ads`` or
``api_config_source``).

- ``grpc``: one gRPC stream over a cluster's HTTP/2 pool (Envoy's ``envoy_grpc``);
- ``resources``: protobuf resources as the JSON edgegw's config model reads;
- ``sotw``: the state-of-the-world protocol of one resource type, without I/O;
- ``delta``: the incremental protocol of one type, without I/O;
- ``rest``: REST-JSON, polled;
- ``mux``: the streams (one ADS stream, or one per type), their reconnects and watchers;
- ``follow``: one stream per node under several workers (worker 0 leads, the others follow);
- ``listeners_clusters``: LDS and CDS, accepted per resource and applied as a reload.
"""
