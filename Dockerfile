# edgegw gateway image. The sites file, certificates and configs are mounted under /etc/edgegw,
# which is the working directory, so the relative paths in configs/ work here and in a checkout.
# The build stage compiles the request path with mypyc (src/edgegw/compiled.py; it needs gcc and
# the Python headers) and the cffi bindings of libnghttp2 (HTTP/2) and OpenSSL (downstream TLS),
# from their headers; the image itself carries the built wheel and the libraries, not the
# compiler.
FROM python:3.11 AS build
RUN apt-get update && apt-get install -y --no-install-recommends libnghttp2-dev libssl-dev
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY src ./src
RUN EDGEGW_MYPYC=1 pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libnghttp2-14 \
    && rm -rf /var/lib/apt/lists/*
# uid and gid 10001: keys made readable by group 10001 on the host are readable here
RUN groupadd --system --gid 10001 edgegw && useradd --system --uid 10001 --gid 10001 edgegw
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /etc/edgegw
USER edgegw
EXPOSE 8080 8443
ENTRYPOINT ["edgegw"]
CMD ["-c", "sites.yaml"]
