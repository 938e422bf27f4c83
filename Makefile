# edgegw: `make demo` runs the gateway on the embedded demo, `make test` runs every test.
VENV     := .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
COMPILED := $(VENV)/.compiled
SOURCES  := $(shell find edgegw -name '*.py')

.PHONY: install compile pure demo test test-pure test-compiled bench lint sysdeps clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The request path compiled with mypyc (edgegw/compiled.py lists it), rebuilt when any source
# changes: a compiled module older than its source would run the old code. `make pure` drops
# the compiled modules; the package runs the same without them.
$(COMPILED): $(STAMP) $(SOURCES) setup.py
	find edgegw -name '*.so' -delete  # (a module taken off the list leaves none behind)
	EDGEGW_MYPYC=1 $(PY) setup.py -q build_ext --inplace
	touch edgegw/compiled__mypyc.*.so $(COMPILED)  # built now, even where no C changed

compile: $(COMPILED)

pure:
	rm -f $(COMPILED)
	find edgegw -name '*.so' -delete

# curl, openssl and chromium are the real clients the end-to-end tests drive; HAProxy and
# nginx are the real peers in front of and behind the gateway (PROXY protocol); pebble is a
# real ACME server and certbot a real ACME client.
sysdeps:
	@(for t in curl openssl chromium haproxy nginx pebble certbot; do command -v $$t >/dev/null || exit 1; done) || \
	  (apt-get update -q && RUNLEVEL=1 apt-get install -y -q curl openssl chromium haproxy nginx pebble certbot)

demo: compile
	$(PY) -m edgegw.demo

# Every test once, on the compiled request path (what ships); before it, the plain-Python
# package on the layer the tests drive in their own process (codecs, fuzz, pool, config, paths,
# routes, the filter chain match) and on end-to-end smoke tests that prove it runs without the
# extensions (one tree: never both at once). The compiled run catches all the pure run does.
PURE_TESTS := tests/test_fuzz.py tests/test_codec_limits.py tests/test_codec_and_upstream.py \
              tests/test_pool.py tests/test_config_fields.py tests/test_path.py \
              tests/test_router.py tests/test_listener_matching.py tests/test_compiled.py \
              tests/test_e2e.py tests/test_attacks.py
.NOTPARALLEL:
test: test-pure test-compiled

test-pure: install sysdeps pure
	$(PY) -m pytest -q $(PURE_TESTS)

test-compiled: install sysdeps compile
	$(PY) -c 'import edgegw.server, edgegw.compiled as c; assert c.active(), "not compiled"'
	$(PY) -m pytest -q --durations=25

bench: compile
	bash bench/run.sh

lint: install
	$(VENV)/bin/ruff check edgegw tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info
	find edgegw -name '*.so' -delete
