# edgegw: `make demo` runs the gateway on the embedded demo, `make test` runs every test.
VENV     := .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed

.PHONY: install compile demo test test-pure test-compiled bench lint sysdeps clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip 'setuptools>=68' wheel
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

# sovereign (Atlassian's REST-JSON xDS control plane) in a virtualenv of its own: its web stack
# would otherwise move the versions edgegw runs on. The xDS tests put it in front of edgegw
# and Envoy.
SOVEREIGN := $(VENV)/sovereign/.installed
$(SOVEREIGN):
	python3 -m venv $(VENV)/sovereign
	$(VENV)/sovereign/bin/pip install -q 'sovereign==0.32.12'
	touch $@

# panva's oidc-provider (OpenID-certified) on the machine's Node.js: the provider the oauth2
# tests log in at. Pinned by its lock file.
OIDC := tests/oidc/node_modules/.installed
$(OIDC): tests/oidc/package-lock.json | sysdeps
	npm ci --prefix tests/oidc --no-audit --no-fund --loglevel=error
	touch $@

install: $(STAMP) $(SOVEREIGN) $(OIDC)

# The source tree always runs as the plain Python it shows. The compiled build is the wheel the
# Docker image ships (the request path compiled with mypyc; src/edgegw/compiled.py lists it),
# installed apart in build/compiled and put first on PYTHONPATH where the compiled path is
# wanted. Its stamp is named by a hash of the sources: any change, however its timestamps
# look (an edit, a checkout, tar -x), builds it again; nothing else does.
SOURCES  := $(shell find src -name '*.py' -o -name '*.c' | sort) setup.py pyproject.toml
BUILT    := build/compiled/.sources-$(shell cat $(SOURCES) | sha256sum | cut -c1-16)
COMPILED := PYTHONPATH=$(CURDIR)/build/compiled

$(BUILT): $(STAMP)
	rm -rf build  # setuptools copies only files newer than its last copy
	EDGEGW_MYPYC=1 $(PY) -m pip wheel -q --no-deps --no-build-isolation --wheel-dir build/wheel .
	$(PY) -m pip install -q --no-deps --target build/compiled build/wheel/edgegw-*.whl
	touch $@

compile: $(BUILT)

# curl, openssl and chromium are the real clients the end-to-end tests drive; HAProxy and
# nginx are the real peers in front of and behind the gateway (PROXY protocol); pebble is a
# real ACME server and certbot a real ACME client; BIND 9 is the zone DNS-01 writes into.
# libnghttp2-dev and libssl-dev: the HTTP/2 codec's and the TLS transport's bindings are built
# against them (as in the Dockerfile).
# crowdsec: its Local API is what the bouncer tests follow (installed offline: a non-empty
# online_api_credentials.yaml keeps its setup from registering with CrowdSec's servers).
# Node.js and npm run the OpenID provider of the oauth2 tests; Debian's are installed only where
# the machine has none (NodeSource's nodejs carries its own npm and conflicts with Debian's).
sysdeps:
	@(for t in curl openssl chromium haproxy nginx pebble certbot htpasswd named crowdsec node npm; do command -v $$t >/dev/null || exit 1; done; \
	  test -f /usr/include/nghttp2/nghttp2.h && test -f /usr/include/openssl/ssl.h) || \
	  (mkdir -p /etc/crowdsec && (test -s /etc/crowdsec/online_api_credentials.yaml || \
	     echo "url: http://127.0.0.1:1/" > /etc/crowdsec/online_api_credentials.yaml) && \
	   apt-get update -q && RUNLEVEL=1 apt-get install -y -q curl openssl chromium haproxy nginx pebble certbot apache2-utils bind9 libnghttp2-dev libssl-dev crowdsec \
	     $$(command -v npm >/dev/null || echo nodejs npm))

demo: compile
	$(COMPILED) $(PY) -m edgegw.demo

# Every test once, on the compiled build (what ships); before it, the source tree's plain Python
# on the layer the tests drive in their own process (codecs, fuzz, pool, config, paths, routes,
# the filter chain match) and on end-to-end smoke tests that prove it runs without the
# extensions. The compiled run catches all the pure run does. Test files run in parallel, one
# file to a worker (its shared gateways with it); every server takes a free port.
PURE_TESTS := tests/test_fuzz.py tests/test_codec_limits.py tests/test_codec_and_upstream.py \
              tests/test_pool.py tests/test_config_fields.py tests/test_path.py \
              tests/test_router.py tests/test_listener_matching.py tests/test_compiled.py \
              tests/test_e2e.py tests/test_attacks.py
PYTEST     := $(PY) -m pytest -q -n 3 --dist loadfile
.NOTPARALLEL:
test: test-pure test-compiled

test-pure: install sysdeps
	$(PY) -c 'import edgegw.compiled as c; assert not c.active(), "compiled"'
	$(PYTEST) $(PURE_TESTS)

# HTTP/2 runs on nghttp2 there and downstream TLS on OpenSSL driven on the socket; the HTTP/2
# suites run once more on the h2 codec, and the TLS suites on the loop's TLS layer (the
# fallbacks; the pure run is on that layer too).
test-compiled: install sysdeps compile
	$(COMPILED) $(PY) -c 'import edgegw.compiled as c; assert c.active(), "not compiled"'
	$(COMPILED) $(PYTEST) --durations=25
	EDGEGW_HTTP2_CODEC=h2 EDGEGW_TLS_TRANSPORT=loop $(COMPILED) $(PYTEST) tests/test_http2.py \
	  tests/test_grpc.py tests/test_tls_policy.py tests/test_tls_sessions.py tests/test_rbac.py

bench: compile
	$(COMPILED) bash bench/run.sh

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build src/*.egg-info
