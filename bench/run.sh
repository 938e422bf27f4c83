#!/usr/bin/env bash
# make bench: installs the peers and load tools if missing (apt, pip), then runs bench/bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for tool in nginx haproxy wrk openssl curl taskset h2load valgrind; do
  command -v "$tool" >/dev/null || need+=("$tool")
done
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(nginx-stream)
if [ ${#need[@]} -gt 0 ]; then
  pkgs=()
  for t in "${need[@]}"; do case $t in taskset) pkgs+=(util-linux);; h2load) pkgs+=(nghttp2-client);; nginx-stream) pkgs+=(libnginx-mod-stream);; *) pkgs+=("$t");; esac; done
  apt-get update -q && apt-get install -y -q "${pkgs[@]}"
fi
[ -x .venv/bin/caddy ] || .venv/bin/pip install -q -e '.[bench]'
ulimit -n "$(ulimit -Hn)"
exec .venv/bin/python bench/bench.py "$@"
