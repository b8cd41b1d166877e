"""Ablation of the progressive distillation recipe at equal token budgets, on the real SmolLM2-135M.

    python bench/ablation.py --config configs/smollm2_135m_gateswa.yaml --tokens 10240 [--eval-windows 2]
                             [--only NAME ...]

Every variant is the config's own job with a few keys overridden, run as its own process into
runs/ablation/<variant>/ (so each resumes on a rerun and frees its memory), and scored by the job's own
held-out evaluation (its first --eval-windows windows; decode speed is not measured). The variants spend the
same total number of training tokens (--tokens):

    both            stage 1 then stage 2, half the tokens each (the default recipe)
    stage1_only     all tokens in stage 1
    stage2_only     all tokens in stage 2
    random_init     as "both", MLA initialised at random instead of by SVD (MLA configs only)
    free_rope       as "both", MLA with export_compatible off: the rope key's frequencies picked by energy and
                    the per-head query norm kept (a student DeepSeek-V3 cannot express; MLA configs only)
    no_fold         as "both", MLA's rope key without FreqFold (each kept frequency's channel from that frequency
                    alone; MLA configs only)
    feature_match   as "both", plus weak feature matching (cosine, weight 0.1, every 4th layer) in stage 2

Prints a table and writes docs/ablation.json (merged with earlier rows, keyed
<config name>@<tokens>/<variant>); each variant runs into runs/ablation/<config name>@<tokens>-<variant>/.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from mindedit.utils.allocator import ensure

REPO = Path(__file__).resolve().parents[1]


def variants(raw: dict, tokens: int, layers: int) -> dict:
    half = tokens // 2
    out = {"both": {"stage1": {"tokens": half}, "stage2": {"tokens": tokens - half}},
           "stage1_only": {"stage1": {"tokens": tokens}, "stage2": {"tokens": 0}},
           "stage2_only": {"stage1": {"tokens": 0}, "stage2": {"tokens": tokens}}}
    if raw["target"]["kind"] == "mla":
        out["random_init"] = dict(out["both"], target={"init": "random"})
        out["free_rope"] = dict(out["both"], target={"export_compatible": False})
        out["no_fold"] = dict(out["both"], target={"freq_fold": False})
    out["feature_match"] = {"stage1": {"tokens": half},
                            "stage2": {"tokens": tokens - half, "feature_weight": 0.1,
                                       "feature_layers": list(range(3, layers, 4))}}
    return out


def variant_config(raw: dict, name: str, change: dict, tokens: int, eval_windows: int) -> dict:
    cfg = json.loads(json.dumps(raw))
    cfg["name"] = f"{raw['name']}@{tokens}-{name}"
    cfg["eval"] = dict(cfg.get("eval") or {}, max_windows=eval_windows, decode_tokens=0)
    cfg.setdefault("train", {})
    for stage in ("stage1", "stage2"):
        spec = dict(cfg["train"].get(stage) or {})
        spec.pop("steps", None)
        spec.update(change[stage])
        cfg["train"][stage] = spec
    cfg["target"].update(change.get("target", {}))
    return cfg


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--tokens", type=int, required=True, help="training tokens per variant (both stages together)")
    p.add_argument("--eval-windows", type=int, default=2, help="held-out windows scored per variant (default 2)")
    p.add_argument("--only", nargs="+", help="run only these variants")
    p.add_argument("--out", default=str(REPO / "docs/ablation.json"))
    args = p.parse_args(argv)
    from mindedit.config import load_job_config
    config = Path(args.config).resolve()
    raw = yaml.safe_load(config.read_text())
    layers = load_job_config(config).model_shapes().num_hidden_layers
    table = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    for name, change in variants(raw, args.tokens, layers).items():
        if args.only and name not in args.only:
            continue
        cfg = variant_config(raw, name, change, args.tokens, args.eval_windows)
        run_dir = REPO / "runs/ablation" / cfg["name"]
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=config.parent, delete=False) as f:
            yaml.safe_dump(cfg, f)  # beside the original: relative data paths keep their meaning
        try:
            print(f"== {name}: {cfg['name']} -> {run_dir}", flush=True)
            subprocess.run([sys.executable, "-m", "mindedit", "run", "--config", f.name, "--run-dir", str(run_dir)],
                           check=True)
        finally:
            Path(f.name).unlink()
        r = json.loads((run_dir / "report.json").read_text())
        table[f"{raw['name']}@{args.tokens}/{name}"] = {k: r[k] for k in (
            "teacher_ppl", "student_ppl_init", "student_ppl", "ppl_ratio", "kl", "top1_agreement", "tokens_stage1",
            "tokens_stage2", "kv_reduction", "eval_context", "minutes")}
        Path(args.out).write_text(json.dumps(table, indent=1) + "\n")
    print(f"\n{'config/variant':<40} {'stage1':>8} {'stage2':>8} {'ppl':>8} {'ratio':>7} {'KL':>7} {'top1':>6}")
    for key, r in table.items():
        print(f"{key:<40} {r['tokens_stage1']:>8} {r['tokens_stage2']:>8} {r['student_ppl']:>8.3f} "
              f"{r['ppl_ratio']:>7.3f} {r['kl']:>7.4f} {100 * r['top1_agreement']:>5.1f}%")


if __name__ == "__main__":
    ensure()  # jemalloc, as the job runs (mindedit.utils.allocator); cells inherit it
    main()
