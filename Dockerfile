# One image for both programs: the chart runs `mailtrap-operator` (the default
# command) and the operator runs receivers from the same image with
# `mailtrap-receiver serve`.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml constraints.txt README.md ./
COPY operator ./operator
COPY receiver ./receiver
# constraints.txt pins every dependency CI tested; only the runtime ones get installed.
RUN /opt/venv/bin/pip install --no-compile -c constraints.txt . \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="mailtrap-webhook-operator" \
      org.opencontainers.image.description="Operator and receiver for Mailtrap email-event webhooks" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/venv /opt/venv
# A numeric UID so runAsNonRoot can be verified without an /etc/passwd entry.
USER 10001:10001
EXPOSE 8080 9090
CMD ["mailtrap-operator"]
