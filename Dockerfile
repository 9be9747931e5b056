# Two images from one Dockerfile, built by hack/images.sh (buildah, no registry
# needed) or by `docker build --target NAME .`:
#   operator (the default: the last stage): runs `mailtrap-operator`; the chart's
#     Deployment;
#   receiver: runs `mailtrap-receiver serve`; the operator's default receiver
#     image. It carries neither kopf nor the Kubernetes client (more than a third
#     of the operator image), which the receiver never imports.
# PYTHON_IMAGE is any Debian-style image with `python` and its venv module:
# hack/images.sh passes one it made with mmdebstrap.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS source
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml constraints.txt README.md ./
COPY operator ./operator
COPY receiver ./receiver

# constraints.txt pins every dependency CI tested; only the runtime ones get installed:
# the package's own for the receiver, plus its `operator` extra for the operator.
FROM source AS build-receiver
RUN /opt/venv/bin/pip install --no-compile -c constraints.txt . \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM source AS build-operator
RUN /opt/venv/bin/pip install --no-compile -c constraints.txt ".[operator]" \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/mailtrap-webhook-operator/mailtrap-webhook-operator"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A numeric UID so runAsNonRoot can be verified without an /etc/passwd entry.
USER 10001:10001

FROM runtime AS receiver
LABEL org.opencontainers.image.title="mailtrap-webhook-receiver" \
      org.opencontainers.image.description="Receiver for Mailtrap email-event webhooks"
COPY --from=build-receiver /opt/venv /opt/venv
EXPOSE 8080 9090
CMD ["mailtrap-receiver", "serve"]

FROM runtime AS operator
LABEL org.opencontainers.image.title="mailtrap-webhook-operator" \
      org.opencontainers.image.description="Operator for Mailtrap email-event webhooks"
COPY --from=build-operator /opt/venv /opt/venv
EXPOSE 8080
CMD ["mailtrap-operator"]
