# The model-serving service on a CUDA-capable PyTorch base (runs on CPU too: DCN_DEVICE=auto).
#   docker build -t deep-complex-networks .
#   docker run --gpus all -p 8000:8000 deep-complex-networks
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CACHE_DIR=/tmp/numba \
    DCN_HOST=0.0.0.0 \
    DCN_PORT=8000

WORKDIR /app
# Dependencies first (pyproject's torch>=2.4 is satisfied by the base image, so torch is not reinstalled),
# then the code: an editable install keeps /app/models/checkpoints the default checkpoint folder.
COPY pyproject.toml README.md ./
COPY models ./models
COPY service ./service
RUN pip install --no-cache-dir -e . \
    && groupadd --gid 10001 dcn && useradd --create-home --uid 10001 --gid 10001 dcn

USER 10001:10001
EXPOSE 8000
# Liveness with the Python already in the image (no curl). Readiness for a load balancer: GET /readyz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DCN_PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "service", "--host", "0.0.0.0"]
