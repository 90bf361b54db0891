#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: Debian packages, the venv, crossrec itself.
#   scripts/setup.sh          what the platform needs (redis-server, venv)
#   scripts/setup.sh --test   plus what the tests need (chromium + chromedriver)
# A second run on a ready machine only checks stamps and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

WANT_TEST=0
[[ "${1:-}" == "--test" ]] && WANT_TEST=1
VENV=.venv
PY=${CROSSREC_PYTHON:-$(command -v python3.11 || command -v python3)}

apt_install() {  # apt_install PKG... : install the Debian packages that are missing
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  echo "setup: installing Debian packages: ${missing[*]}"
  local sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || {
    $sudo apt-get update -qq >/dev/null
    $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  }
}

apt_install redis-server
[[ $WANT_TEST -eq 1 ]] && apt_install chromium chromium-driver

# The stamp covers every file that decides what goes into the venv.
stamp_src=$(cat pyproject.toml requirements/lock.txt requirements/nodeps.txt | sha256sum | cut -c1-16)
stamp="$VENV/.crossrec-setup-$stamp_src"
if [[ -f "$stamp" ]]; then
  exit 0
fi

[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# torch first, pinned to the CPU build: with torch present, nothing later can pull a CUDA wheel.
[[ -d /opt/wheels ]] && pip+=(--find-links /opt/wheels)
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" -c requirements/lock.txt -e ".[dev]"
"${pip[@]}" --no-deps -r requirements/nodeps.txt
"$VENV/bin/python" -c "import torch; assert not torch.version.cuda, 'a CUDA torch was installed'"
rm -f "$VENV"/.crossrec-setup-*
touch "$stamp"
echo "setup: environment ready in $VENV"
