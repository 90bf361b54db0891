# The crossrec application image (consumer, API, batch jobs). CPU torch only: pass the index
# that serves CPU wheels as TORCH_INDEX_URL (build arg) so that pip never pulls a CUDA build.
FROM python:3.11-slim-bookworm
ARG TORCH_INDEX_URL
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/crossrec
COPY requirements/ ./requirements/
RUN pip install --no-cache-dir torch==2.13.0 --index-url "${TORCH_INDEX_URL:?build with --build-arg TORCH_INDEX_URL=...}"
COPY . .
RUN pip install --no-cache-dir -c requirements/lock.txt . \
    && pip install --no-cache-dir --no-deps -r requirements/nodeps.txt
USER 1000
