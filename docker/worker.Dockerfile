# GPU training worker: CUDA runtime base, the CUDA build of the pinned torch.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /venv
ENV PATH=/venv/bin:$PATH
RUN pip install "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY unlearning unlearning
COPY core core
COPY lethe lethe
COPY server server
COPY workers workers
COPY migrations migrations
RUN pip install .
CMD ["celery", "-A", "workers.main:celery_app", "worker", "-Q", "train", "--pool=solo", "--concurrency=1", "--loglevel=INFO"]
