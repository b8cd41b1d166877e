"""The job's report: ``report.json`` (the numbers), ``report.md`` (for people) and ``plots/*.png``: loss curves per
stage (smoothed over the raw steps), the per-layer stage-1 loss at the start and end, perplexity of teacher /
initial / trained student, task accuracies of teacher and student, the needle grid as a heat map."""
import json
import statistics
import time
from pathlib import Path

from mindedit.utils.files import atomic_write_json, atomic_write_text
from mindedit.utils.metrics import read


def job_report(cfg, student, init: dict, final: dict, tokens: dict, speed: dict, started: float,
               tasks: dict = None, needle: dict = None, curve: list = None) -> dict:
    """The numbers of report.json: teacher vs student before and after training (mindedit.eval.compare), the KV
    accounting at the eval context and the config's contexts, the attention the student got, tokens trained per
    stage, decode speed and cache bytes (mindedit.job.decode_speed), task accuracies (mindedit.eval.tasks), the
    needle grid (mindedit.eval.needle), the learning curve (mindedit.job.learning_curve), minutes since
    ``started``."""
    from dataclasses import asdict
    from mindedit.eval.kv import kv_report
    kv = kv_report(student.config, student.target, sorted({cfg.eval["seq_len"], *cfg.contexts}), cfg.kv_dtype_bytes)
    at_eval = next(r for r in kv["contexts"] if r["context"] == cfg.eval["seq_len"])
    return {
        "name": cfg.name, "target": cfg.target.kind, "eval_context": cfg.eval["seq_len"],
        "eval_tokens": final["tokens"],
        "teacher_ppl": final["teacher_ppl"], "student_ppl_init": init["student_ppl"],
        "student_ppl": final["student_ppl"], "ppl_ratio": final["ppl_ratio"],
        "kl_init": init["kl"], "kl": final["kl"],
        "top1_agreement_init": init["top1_agreement"], "top1_agreement": final["top1_agreement"],
        "kv_reduction": at_eval["reduction"], "kv": kv,
        "attention": asdict(student.target), "window_errors": student.window_errors,
        "tokens_stage1": tokens.get("stage1", 0), "tokens_stage2": tokens.get("stage2", 0),
        **speed, "tasks": tasks or {}, "needle": needle or {}, "curve": curve or [],
        "minutes": (time.time() - started) / 60,
    }


def stage_speeds(rows: list) -> dict:
    """Per stage, from metrics.jsonl: steady-state tokens/s (the median step after each compile) and compile_s,
    the first step's time beyond a steady step (one per process that ran the stage: a resumed stage compiles
    again)."""
    out = {}
    for stage in ("stage1", "stage2"):
        pts = [x for x in rows if x["stage"] == stage]
        if len(pts) < 2:
            continue
        seconds = [(b["tokens"] - a["tokens"]) / b["tokens_per_s"] for a, b in zip([{"tokens": 0}] + pts, pts)]
        first = [0] + [i for i in range(1, len(pts)) if pts[i]["step"] != pts[i - 1]["step"] + 1]
        steady = statistics.median(t for i, t in enumerate(seconds) if i not in first)
        out[stage] = {"tokens_per_s": round((pts[-1]["tokens"] - pts[-2]["tokens"]) / steady, 1),
                      "compile_s": round(sum(max(0.0, seconds[i] - steady) for i in first), 1)}
    return out


def write_report(run_dir, report: dict):
    run_dir = Path(run_dir)
    rows = read(run_dir / "metrics.jsonl")
    report = dict(report, speed=stage_speeds(rows), plots=plot(run_dir, rows, report))
    atomic_write_json(run_dir / "report.json", report)
    atomic_write_text(run_dir / "report.md", markdown(report))
    return report


def headline(r: dict) -> str:
    return (f"teacher ppl {r['teacher_ppl']:.3f} | student ppl {r['student_ppl']:.3f} "
            f"({r['ppl_ratio']:.3f}x; before training {r['student_ppl_init']:.3f}) | KL {r['kl']:.4f} "
            f"(init {r['kl_init']:.4f}) | top-1 agreement {100 * r['top1_agreement']:.1f}% | KV -"
            f"{100 * r['kv_reduction']:.1f}% at {r['eval_context']} tokens | trained on "
            f"{r['tokens_stage1']:,} + {r['tokens_stage2']:,} tokens | job {r['minutes']:.1f} min")


def markdown(r: dict) -> str:
    lines = [f"# {r['name']}: {r['target']} conversion", "", headline(r), "",
             f"Evaluated on {r['eval_tokens']:,} held-out next-token predictions at context {r['eval_context']}.", "",
             "| | teacher | student before training | student |", "|---|---|---|---|",
             f"| perplexity | {r['teacher_ppl']:.3f} | {r['student_ppl_init']:.3f} | {r['student_ppl']:.3f} |",
             f"| KL(teacher \\|\\| student) per token | 0 | {r['kl_init']:.4f} | {r['kl']:.4f} |",
             f"| top-1 agreement | 100% | {100 * r['top1_agreement_init']:.1f}% | {100 * r['top1_agreement']:.1f}% |"]
    if r["decode_tokens_per_s_teacher"] is not None:  # eval.decode_tokens: 0 skips the decode measurement
        lines += [f"| greedy decode tokens/s (prompt {r['decode_prompt_tokens']}) | "
                  f"{r['decode_tokens_per_s_teacher']:.2f} | | {r['decode_tokens_per_s_student']:.2f} |",
                  f"| cache bytes at that length | {r['cache_bytes_teacher']:,} | | {r['cache_bytes_student']:,} |"]
    a = r.get("attention") or {}
    if a.get("kind") == "gateswa":
        full = [i for i, t in enumerate(a["layer_types"]) if t == "full"]
        how = (" (pattern auto: the layers with the largest window error on calibration text)"
               if a.get("pattern") == "auto" else "")
        lines += ["", f"Full-attention layers{how}: {', '.join(map(str, full))}; the other "
                      f"{len(a['layer_types']) - len(full)} use a {a['window']}-token window + {a['sink_tokens']} "
                      f"sink tokens."]
    if r.get("tasks"):
        from mindedit.eval.tasks import format_tasks
        lines += ["", "Tasks (zero-shot log-likelihood multiple choice, lm-evaluation-harness prompts; accuracy in %, "
                      "± standard error; the delta is paired over the same items):", "", format_tasks(r["tasks"])]
    n = r.get("needle")
    if n:
        lines += ["", "Needle in a haystack (RULER's single needle in essays; 1 = the 7-digit value retrieved), "
                      "teacher / student:", "",
                  "| depth | " + " | ".join(f"{c:,} tokens" for c in n["contexts"]) + " |",
                  "|---|" + "---|" * len(n["contexts"])]
        for d, t, s in zip(n["depths"], n["teacher"], n["student"]):
            lines.append(f"| {d:.0%} | " + " | ".join(f"{a} / {b}" for a, b in zip(t, s)) + " |")
    if r.get("curve"):
        c = r["curve"]
        lines += ["", f"Learning curve ({c[0]['predictions']:,} held-out predictions at context {r['eval_context']}; "
                      "plots/curve.png):", "", "| training tokens | stage, step | student / teacher ppl | KL |",
                  "|---|---|---|---|"]
        lines += [f"| {p['tokens']:,} | {p['stage']} {p['step']} | {p['ppl_ratio']:.3f}x | {p['kl']:.4f} |" for p in c]
    lines += ["", "KV cache (bytes at the config's kv_dtype):", "",
              "| context | teacher | student | reduction |", "|---|---|---|---|"]
    for c in r["kv"]["contexts"]:
        lines.append(f"| {c['context']} | {c['teacher_bytes']:,} | {c['student_bytes']:,} | "
                     f"{100 * c['reduction']:.1f}% |")
    lines += ["", "Training: stage 1 (layer-wise) {:,} tokens, stage 2 (model-level) {:,} tokens; the job (data, "
              "training, evaluation) {:.1f} minutes up to this report.".format(r["tokens_stage1"], r["tokens_stage2"],
                                                                               r["minutes"])]
    for stage, v in r.get("speed", {}).items():
        lines.append(f"{stage}: {v['tokens_per_s']:.1f} tokens/s in steady state, {v['compile_s']:.0f} s compiling.")
    if r.get("peak_rss_mb"):
        lines.append(f"Peak memory (RSS): {r['peak_rss_mb']:,.0f} MB (the largest process: training "
                     f"{r['peak_rss_mb_training']:,.0f} MB, evaluation and export {r['peak_rss_mb_evaluation']:,.0f} "
                     f"MB); allocator: {r.get('allocator', 'glibc')}.")
    lines.append("")
    lines += [f"![{Path(p).stem}]({p})" for p in r.get("plots", [])]
    return "\n".join(lines) + "\n"


def plot(run_dir: Path, rows: list, r: dict) -> list:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = []

    def save(fig, name):
        tmp = out / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        plt.close(fig)
        tmp.replace(out / name)
        written.append(f"plots/{name}")

    stages = [s for s in ("stage1", "stage2") if any(x["stage"] == s for x in rows)]
    if stages:
        fig, axes = plt.subplots(1, len(stages), figsize=(5.5 * len(stages), 3.8), squeeze=False)
        for ax, s in zip(axes[0], stages):
            pts = [x for x in rows if x["stage"] == s]
            terms = ["loss"] + [t for t in ("feature", "ce") if s == "stage2" and any(x.get(t) for x in pts)]
            for term, color in zip(terms, ("#4c72b0", "#dd8452", "#55a868")):
                x, y = [p["tokens"] for p in pts], [p[term] for p in pts]
                ax.plot(x, y, color=color, alpha=0.3, linewidth=0.8)   # the raw steps, faint
                ax.plot(x, smoothed(y), color=color, label=f"{term} (smoothed)")
            ax.set(title=f"{s} loss", xlabel="tokens", yscale="log")
            ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v / 1000:g}k" if v else "0"))
            ax.legend()
        save(fig, "loss.png")
        s1 = [x for x in rows if x["stage"] == "stage1"]
        if s1:
            keys = sorted(k for k in s1[0] if k.startswith("layer_"))
            fig, ax = plt.subplots(figsize=(max(5.0, 0.28 * len(keys)), 3.8))
            idx = list(range(len(keys)))
            ax.bar([i - 0.2 for i in idx], [s1[0][k] for k in keys], 0.4, label=f"step {s1[0]['step']}")
            ax.bar([i + 0.2 for i in idx], [s1[-1][k] for k in keys], 0.4, label=f"step {s1[-1]['step']}")
            ax.set(title="stage 1: normalised MSE per layer", xlabel="layer", yscale="symlog")
            ax.set_yscale("symlog", linthresh=1e-4)
            ax.legend()
            save(fig, "stage1_layers.png")
    if r.get("tasks"):
        names = list(r["tasks"])
        fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(names), 3.6))
        for k, (who, color) in enumerate((("teacher", "#4c72b0"), ("student", "#55a868"))):
            acc = [100 * r["tasks"][n][who]["acc_norm"] for n in names]
            err = [100 * r["tasks"][n][who]["acc_norm_stderr"] for n in names]
            bars = ax.bar([i + (k - 0.5) * 0.38 for i in range(len(names))], acc, 0.38, yerr=err, color=color,
                          label=who, capsize=3)
            ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_xticks(range(len(names)), [f"{n}\n(n={r['tasks'][n]['n']})" for n in names])
        ax.set(title="zero-shot acc_norm (%)", ylim=(0, 100))
        ax.legend()
        save(fig, "tasks.png")
    n = r.get("needle")
    if n:
        fig, axes = plt.subplots(1, 2, figsize=(2.6 + 1.4 * len(n["contexts"]), 0.7 + 0.55 * len(n["depths"])),
                                 squeeze=False, sharey=True)
        for ax, who in zip(axes[0], ("teacher", "student")):
            ax.imshow(n[who], cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
            ax.set_xticks(range(len(n["contexts"])), [f"{c // 1024}K" if c >= 1024 else str(c) for c in n["contexts"]])
            ax.set_yticks(range(len(n["depths"])), [f"{d:.0%}" for d in n["depths"]])
            for i, row in enumerate(n[who]):
                for j, v in enumerate(row):
                    ax.text(j, i, "found" if v else "missed", ha="center", va="center", fontsize=8)
            ax.set(title=f"needle: {who}", xlabel="context", ylabel="depth" if who == "teacher" else None)
        save(fig, "needle.png")
    if r.get("curve"):
        fig, ax = plt.subplots(figsize=(6.0, 3.8))
        c = r["curve"]
        ratios = [p["ppl_ratio"] for p in c]
        ax.plot([p["tokens"] for p in c], ratios, "o-", color="#55a868", label="student / teacher perplexity")
        log_scale = max(ratios) > 3 * min(ratios)
        ax.set(title=f"learning curve ({c[0]['predictions']:,} held-out predictions at context "
                     f"{r['eval_context']})", xlabel="training tokens (stage 1 + stage 2)", ylabel="ppl ratio",
               yscale="log" if log_scale else "linear")
        if log_scale:  # labelled ticks inside the range (a log axis labels only whole decades)
            ax.set_yticks([t for t in (1, 1.1, 1.25, 1.5, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
                           if min(ratios) / 1.1 <= t <= max(ratios) * 1.1])
        ax.yaxis.set_minor_formatter(plt.NullFormatter())
        ax.axhline(1.0, color="#4c72b0", linewidth=0.8, linestyle=":")
        ends = [p["tokens"] for p in c if p["stage"] == "stage1"]
        if ends and any(p["stage"] == "stage2" for p in c):
            ax.axvline(max(ends), color="grey", linewidth=0.8, linestyle="--")
            ax.text(max(ends), ax.get_ylim()[1], " stage 2 ->", va="top", fontsize=8, color="grey")
        ax.annotate(f"{ratios[-1]:.3f}x", (c[-1]["tokens"], ratios[-1]), textcoords="offset points", xytext=(-10, 8),
                    fontsize=8)
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v / 1000:g}k" if v else "0"))
        ax.legend()
        save(fig, "curve.png")
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    names, values = ["teacher", "student\n(init)", "student"], [r["teacher_ppl"], r["student_ppl_init"],
                                                               r["student_ppl"]]
    bars = ax.bar(names, values, color=["#4c72b0", "#c44e52", "#55a868"])
    ax.bar_label(bars, fmt="%.2f")
    ax.set(title=f"perplexity at context {r['eval_context']}", yscale="log")
    save(fig, "perplexity.png")
    return written


def smoothed(values: list, span: int = 10) -> list:
    """Exponential moving average (bias-corrected, so the first points are not pulled to zero) over ~span steps."""
    alpha, avg, out = 2.0 / (span + 1), 0.0, []
    for i, v in enumerate(values):
        avg = alpha * v + (1 - alpha) * avg
        out.append(avg / (1 - (1 - alpha) ** (i + 1)))
    return out


def load(run_dir) -> dict:
    return json.loads((Path(run_dir) / "report.json").read_text())
