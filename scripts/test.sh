#!/usr/bin/env bash
# The test command: installs everything it needs (idempotent), then runs pytest. Extra args go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh" --test
cd "$root"
export PATH="$root/.venv/bin:$PATH"   # msrun starts workers with the python on PATH
LD_PRELOAD="$(python -m mindedit.utils.allocator)"   # the allocator the jobs run on (jemalloc if installed)
export LD_PRELOAD
exec python -m pytest "$@"
