# edgegw: `make demo` runs the gateway on the embedded demo, `make test` runs every test.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench lint sysdeps clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# curl, openssl and chromium are the real clients the end-to-end tests drive; HAProxy and
# nginx are the real peers in front of and behind the gateway (PROXY protocol); pebble is a
# real ACME server and certbot a real ACME client.
sysdeps:
	@(for t in curl openssl chromium haproxy nginx pebble certbot; do command -v $$t >/dev/null || exit 1; done) || \
	  (apt-get update -q && RUNLEVEL=1 apt-get install -y -q curl openssl chromium haproxy nginx pebble certbot)

demo: install
	$(PY) -m edgegw.demo

test: install sysdeps
	$(PY) -m pytest -q

bench: install
	bash bench/run.sh

lint: install
	$(VENV)/bin/ruff check edgegw tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info
