# API, migrations and Flower: CPU torch (the API answers VQA with the frozen model on CPU or GPU).
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# torch first and exactly pinned, from the CPU index: anything looser pulls a multi-GB CUDA build.
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY unlearning unlearning
COPY core core
COPY lethe lethe
COPY server server
COPY workers workers
COPY migrations migrations
RUN pip install . flower==2.2.0
EXPOSE 8000
CMD ["uvicorn", "--factory", "server.app:create_app", "--host", "0.0.0.0", "--port", "8000"]
