#!/bin/sh
# Install leadscore into a fresh virtual environment at $1 (default /opt/leadscore).
#
# The Dockerfile's build stage runs exactly this, and CI runs it too (deploy/smoke.sh), so the
# image's install step is tested on every change although no container engine runs in CI.
# A regular (non-editable) install: the wheel must carry the migrations, the bundled rules and
# the dashboard's templates by itself.
set -eu
venv="${1:-/opt/leadscore}"
src="${2:-.}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --no-cache-dir --upgrade pip
"$venv/bin/pip" install --quiet --no-cache-dir "$src[postgres]"
"$venv/bin/leadscore" --version
