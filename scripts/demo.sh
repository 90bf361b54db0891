#!/usr/bin/env bash
# Set up (idempotent) and run the main job end to end on the embedded defaults:
# local services, the nightly DAG under a real Airflow scheduler on the Art-Office sample shipped in
# data/amazon-art-office, streaming, report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/crossrec demo "$@"
