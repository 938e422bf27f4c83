# edgegw gateway image. The sites file, certificates and configs are mounted under /etc/edgegw,
# which is the working directory, so the relative paths in configs/ work here and in a checkout.
FROM python:3.11-slim
RUN useradd --system --uid 10001 edgegw
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgegw ./edgegw
RUN pip install --no-cache-dir . && rm -rf /src
WORKDIR /etc/edgegw
USER edgegw
EXPOSE 8080 8443
ENTRYPOINT ["edgegw"]
CMD ["-c", "sites.yaml"]
