#!/usr/bin/env bash
# MindInsight dashboard for a run's loss curves (SummaryRecord scalars under RUN_DIR/summary/).
#   bash scripts/dashboard.sh runs/<name> [--port 8080]     start (installs MindInsight on first use), print URL
#   bash scripts/dashboard.sh --stop [--port 8080]            stop the server on that port
# MindInsight 2.3.1 pins protobuf<=3.20.1, which breaks `import mindspore`, so it lives in its own venv
# (.venv-mindinsight, created here once). The server binds 127.0.0.1 only.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MINDINSIGHT_VENV:-$root/.venv-mindinsight}"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null || py=python3
port=8080 run="" stop=0
while (($#)); do
  case "$1" in
    --port) port="${2:?--port needs a number}"; shift 2 ;;
    --stop) stop=1; shift ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    -*) echo "dashboard.sh: unknown option $1" >&2; exit 2 ;;
    *) run="$1"; shift ;;
  esac
done
[[ "$port" =~ ^[0-9]+$ ]] || { echo "dashboard.sh: --port $port: expected a number" >&2; exit 2; }

if [[ ! -x "$venv/bin/mindinsight" ]]; then
  echo "[dashboard] installing MindInsight 2.3.1 into $venv (first use)"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip --disable-pip-version-check -q install mindinsight==2.3.1
fi
export PATH="$venv/bin:$PATH"   # mindinsight starts gunicorn from its own venv

if ((stop)); then
  exec mindinsight stop --port "$port"
fi
[[ -n "$run" ]] || { echo "usage: bash scripts/dashboard.sh runs/<name> [--port N] | --stop [--port N]" >&2; exit 2; }
[[ -d "$run/summary" ]] || { echo "dashboard.sh: $run/summary: no such directory (is $run a mindedit run?)" >&2; exit 2; }
run="$(cd "$run" && pwd)"
mkdir -p "$run/.mindinsight"
mindinsight start --summary-base-dir "$run" --port "$port" --workspace "$run/.mindinsight" >/dev/null
echo "MindInsight: http://127.0.0.1:$port/  (run $run; stop with: bash scripts/dashboard.sh --stop --port $port)"
