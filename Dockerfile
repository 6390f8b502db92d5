# Component image (CPU): every KFP step, the BentoML API, the Feast feature server, the monitoring
# job. Name and tag come from the config (kfp.image). Build from the repository root:
#   docker build -t ghcr.io/recsys-kubeflow/components:0.1.0 .
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    GX_ANALYTICS_ENABLED=false \
    BENTOML_DO_NOT_TRACK=true \
    FEAST_USAGE=False

# The CPU build of torch first (the default PyPI wheel pulls in the CUDA libraries), same pin as pyproject.toml.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /app
COPY pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY monitoring ./monitoring
COPY recsys ./recsys
COPY feature_repo ./feature_repo
# The project and its runtime dependencies only (no dev extra); torch stays the CPU build above.
RUN pip install . torch==2.13.0 \
    && groupadd --gid 10001 recsys \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin recsys

USER 10001:10001
EXPOSE 3000 6566
CMD ["recsys", "--help"]
