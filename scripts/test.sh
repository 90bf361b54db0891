#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. Tests start their own real Redis and
# Kafka-protocol broker on free ports; nothing needs to be running beforehand.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
