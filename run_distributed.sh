#!/usr/bin/env bash
# The one entry for mindedit jobs.
#   bash run_distributed.sh                     the embedded CPU default: configs/smollm2_135m_gateswa.yaml end to end
#                                               (data, stage 1, stage 2, eval, report, export) into runs/<name>/
#   bash run_distributed.sh --config FILE.yaml  that job on this machine (rerun the same command to resume);
#                                               its parallel: section (dp x tp x pp ranks) starts workers via msrun
#   ... --set KEY=VALUE                         override any config key, e.g. --set parallel.tp=2 --set stage1.steps=5
#   ... --dry-run                               print per node the command, environment, logs; rank table; memory plan
# The cluster: section (nodes, devices, launcher msrun | rank_table) spreads the ranks over several servers (ssh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
config="$root/configs/smollm2_135m_gateswa.yaml"
args=()
while (($#)); do
  case "$1" in
    --config) config="${2:?--config needs a file}"; shift 2 ;;
    --run-dir) args+=(--run-dir "${2:?--run-dir needs a directory}"); shift 2 ;;
    --set) args+=(--set "${2:?--set needs KEY=VALUE}"); shift 2 ;;
    --dry-run) args+=(--dry-run); shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "run_distributed.sh: unknown argument $1 (expected --config FILE [--run-dir DIR] [--set KEY=VALUE] [--dry-run])" >&2
       exit 2 ;;
  esac
done
[[ -f "$config" ]] || { echo "run_distributed.sh: --config $config: no such file" >&2; exit 2; }
config="$(cd "$(dirname "$config")" && pwd)/$(basename "$config")"
bash "$root/scripts/setup.sh"
export PATH="$root/.venv/bin:$PATH"
cd "$root"
exec python -m mindedit run --config "$config" "${args[@]}"
