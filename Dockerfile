# The model-serving service (python -m service) with the shipped checkpoints.
#   GPU host:  docker compose up --build                 (CUDA 13.0 build of torch: NVIDIA driver >= 580.65.06)
#   CPU host:  docker compose -f docker-compose.yml -f docker-compose.cpu.yml up --build
#   by hand:   docker build -t deep-complex-networks . && docker run --gpus all -p 8000:8000 deep-complex-networks
# Build arguments:
#   BASE_IMAGE            a Debian-based image with python3 (>= 3.11) and its venv module
#   TORCH_VARIANT         cuda (default: PyPI's torch 2.13.0 with the CUDA 13.0 libraries as wheels) or cpu
#   TORCH_CPU_INDEX_URL   where the cpu variant finds torch 2.13.0+cpu (empty: only PIP_FIND_LINKS / the index)
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_CERT   pip's own settings, for mirrors and proxies
# Exact dependency versions come from constraints.txt, the file `make test` installs with.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# One stage, on purpose. A builder stage would copy the finished venv (1.45 GB with CPU torch, several GB with
# CUDA) into the runtime stage as one more layer: +68 s of a 208 s cold build here, and one layer holding torch and
# everything else, so every dependency bump would re-ship torch. Here torch has its own layer, reused until its
# pin changes. Nothing is compiled (every dependency installs from a wheel): no compiler in any layer, and pip is
# removed from the venv once it is done.
FROM ${BASE_IMAGE}
ARG TORCH_VARIANT=cuda
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    NUMBA_CACHE_DIR=/tmp/numba \
    DCN_HOST=0.0.0.0 \
    DCN_PORT=8000
SHELL ["/bin/sh", "-eu", "-c"]
RUN groupadd --gid 10001 dcn && useradd --create-home --uid 10001 --gid 10001 dcn
WORKDIR /app
COPY constraints.txt ./
# torch on its own layer, first: the largest download, and it depends on nothing in the project.
RUN python3 -m venv /opt/venv; \
    case "${TORCH_VARIANT}" in \
      cuda) pip install -c constraints.txt "torch==2.13.0" ;; \
      cpu) pip install -c constraints.txt ${TORCH_CPU_INDEX_URL:+--extra-index-url "$TORCH_CPU_INDEX_URL"} \
               "torch==2.13.0+cpu" ;; \
      *) echo "TORCH_VARIANT must be cuda or cpu, not ${TORCH_VARIANT}" >&2; exit 2 ;; \
    esac
# The service's dependencies (pyproject's [project.dependencies], not the train/dev extras), not the project itself:
# its code is copied below, so a code change reinstalls nothing.
COPY pyproject.toml ./
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt; \
    pip install -c constraints.txt -r /tmp/requirements.txt; \
    pip check; \
    pip uninstall --yes pip; \
    rm /tmp/requirements.txt
# The code and the shipped checkpoints (service.settings finds them in /app/models/checkpoints), root-owned and
# read-only for the service user; bytecode compiled here, since the service cannot write it.
COPY models ./models
COPY service ./service
RUN python -m compileall -q models service

USER 10001:10001
EXPOSE 8000
# Liveness with the Python already in the image (no curl). Readiness for a load balancer: GET /readyz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DCN_PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "service", "--host", "0.0.0.0"]
