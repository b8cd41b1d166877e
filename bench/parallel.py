"""Per-rank parameter bytes, peak memory and step time of each parallel layout on the tiny CI models, and the
memory of the shared-backbone teacher + student against a separate teacher copy.

    python bench/parallel.py [--steps 4] [--only dense-dp2 ...]

Each layout is one `python -m mindedit train` (msrun inside) into runs/bench_parallel/<layout>/; the numbers come
from its metrics.jsonl (median seconds per optimizer step, first step excluded: it compiles) and the workers'
logs/rank_<r>.json. On the 2-core CPU machine the ranks share two cores, so step times show the cost of the
communication and duplicated work, not a speed-up. Prints tables; writes docs/parallel_bench.json.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from mindedit.utils.allocator import ensure

REPO = Path(__file__).resolve().parents[1]
DENSE, MOE = "configs/tiny_gateswa.yaml", "configs/ci/tiny_qwen3_moe.yaml"
LAYOUTS = {
    "dense-single": (DENSE, []), "dense-dp2": (DENSE, ["parallel.dp=2"]), "dense-tp2": (DENSE, ["parallel.tp=2"]),
    "dense-pp2": (DENSE, ["parallel.pp=2"]), "dense-tp2-pp2": (DENSE, ["parallel.tp=2", "parallel.pp=2"]),
    "moe-single": (MOE, []), "moe-tp2": (MOE, ["parallel.tp=2"]),
    "moe-dp2-ep2": (MOE, ["parallel.dp=2", "parallel.ep=2"]),
}


def run_layout(name, config, sets, steps):
    run_dir = REPO / "runs" / "bench_parallel" / name
    args = [sys.executable, "-m", "mindedit", "train", "--config", config, "--run-dir", str(run_dir)]
    for s in [f"stage1.steps={steps}", f"stage2.steps={steps}", *sets]:
        args += ["--set", s]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(args, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ranks = [json.loads(p.read_text()) for p in sorted((run_dir / "logs").glob("rank_*.json"))]
    out = {"layout": name, "ranks": len(ranks)}
    for stage in ("stage1", "stage2"):
        times = [r2["time"] - r1["time"] for r1, r2 in zip(rows, rows[1:])
                 if r1["stage"] == stage and r2["stage"] == stage]
        out[f"{stage}_s_per_step"] = statistics.median(times) if times else None
    out["max_rank_teacher_mib"] = max(r["teacher_param_bytes"] for r in ranks) / 2 ** 20
    out["max_rank_student_mib"] = max(r["student_own_param_bytes"] for r in ranks) / 2 ** 20
    out["max_rank_peak_rss_mib"] = max(r["peak_rss_bytes"] for r in ranks) / 2 ** 20
    return out


def shared_vs_separate() -> dict:
    """Parameter bytes and RSS of teacher + student sharing one backbone vs the student holding its own copy of
    the backbone (what training without shared cells would keep), on SmolLM2-135M with the GateSWA config."""
    code = r"""
import json, resource, sys
import numpy as np
from mindedit.config import load_job_config
from mindedit.edit import edit_model
from mindedit.edit.surgery import own_parameters, untie
from mindedit.models import from_pretrained
cfg = load_job_config("configs/smollm2_135m_gateswa.yaml")
teacher = from_pretrained(cfg.resolve_model_path())
student = edit_model(teacher, cfg.target, None)
if sys.argv[1] == "separate":
    untie(student, teacher, "all")
unique = {id(p): p for m in (teacher, student) for p in m.get_parameters()}
print(json.dumps({"param_bytes": int(sum(p.nbytes for p in unique.values())),
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""
    out = {}
    for mode in ("shared", "separate"):
        proc = subprocess.run([sys.executable, "-c", code, mode], cwd=REPO, capture_output=True, text=True,
                              check=True)
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["param_ratio_separate_over_shared"] = out["separate"]["param_bytes"] / out["shared"]["param_bytes"]
    out["rss_ratio_separate_over_shared"] = out["separate"]["peak_rss_bytes"] / out["shared"]["peak_rss_bytes"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per stage (default 4)")
    ap.add_argument("--only", nargs="+", choices=sorted(LAYOUTS), help="just these layouts")
    args = ap.parse_args()
    rows = [run_layout(n, *LAYOUTS[n], args.steps) for n in (args.only or LAYOUTS)]
    print(f"{'layout':<16}{'ranks':>6}{'teacher MiB/rank':>18}{'student MiB/rank':>18}{'peak RSS MiB':>14}"
          f"{'stage1 s/step':>15}{'stage2 s/step':>15}")
    for r in rows:
        print(f"{r['layout']:<16}{r['ranks']:>6}{r['max_rank_teacher_mib']:>18.1f}{r['max_rank_student_mib']:>18.2f}"
              f"{r['max_rank_peak_rss_mib']:>14.0f}{r['stage1_s_per_step']:>15.3f}{r['stage2_s_per_step']:>15.3f}")
    mem = shared_vs_separate()
    shared, separate, mib = mem["shared"], mem["separate"], 2 ** 20
    print(f"\nSmolLM2-135M teacher + GateSWA student: shared backbone {shared['param_bytes'] / mib:.0f} MiB "
          f"parameters ({shared['peak_rss_bytes'] / mib:.0f} MiB peak RSS), separate copy "
          f"{separate['param_bytes'] / mib:.0f} MiB ({separate['peak_rss_bytes'] / mib:.0f} MiB): "
          f"{mem['param_ratio_separate_over_shared']:.2f}x parameters, {mem['rss_ratio_separate_over_shared']:.2f}x RSS")
    out = REPO / "docs" / "parallel_bench.json"
    out.write_text(json.dumps({"layouts": rows, "shared_vs_separate": mem}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    ensure()  # jemalloc, as the job runs (mindedit.utils.allocator); cells inherit it
    main()
