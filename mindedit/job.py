"""The conversion job as steps that take and return values (DESIGN.md, "The job"); ``run`` puts them in order:

    shards = prepare_data(cfg, run_dir)                 token shards of the train / eval files
    train_apart(cfg, run_dir)                           stage 1, then stage 2, in processes of their own
    models = build(cfg, shards)                         teacher, student (edited + initialised), trainable set
    init   = evaluate(cfg, models, shards, "init")      teacher vs the untrained student
    tokens = load_trained(models, run_dir)              the student of the final checkpoint
    final  = evaluate(cfg, models, shards, "final")
    curve  = learning_curve(cfg, models, shards)        teacher vs the student at milestones (eval.curve_points)
    scores = task_scores(cfg, models, shards, "final")  zero-shot tasks (lm-eval prompts), teacher vs student
    needle = needle_scores(cfg, models, shards)         retrieval from far back in the context (RULER's needle)
    report = write_report(run_dir, job_report(...))     report.json, report.md, plots/
    export(cfg, models, shards, run_dir / "export")     the converted model (a directory HF transformers loads)

Everything lands in ``runs/<name>/``. Rerunning the same command resumes: data and the initial evaluation are
reused, training continues from the newest valid checkpoint, finished stages are skipped. Training runs first, in
processes of its own (mindedit.launch.train_apart: one child, or a sharded job's ranks each running ``worker``),
because a compiled graph's memory is freed only with its process; their checkpoints hold full tensors, from which
this process loads the trained student (``load_trained``) after the initial evaluation.
"""
import gc
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import mindspore as ms

from mindedit.config import JobConfig, stage_steps
from mindedit.errors import MindeditError
from mindedit.utils.files import atomic_write_json, atomic_write_text


def log(msg: str):
    print(msg, flush=True)


def free_graph_memory():
    """Compiled graphs keep their buffers; drop them between phases (docs/environment.md)."""
    gc.collect()
    ms.ms_memory_recycle()


@dataclass
class Shards:
    """The job's token shards (run_dir/data) and the tokenizer that made them."""
    dir: Path
    manifest: dict
    tokenizer: object

    def tokens(self, split: str) -> np.ndarray:
        from mindedit.data.shards import load_tokens
        return np.asarray(load_tokens(self.dir, split))


@dataclass
class Models:
    """Teacher and student (sharing their frozen backbone) and what training needs to know of them."""
    teacher: object
    student: object
    weights: dict      # the student's own Parameters by model path: what checkpoints hold (this rank's pieces)
    shapes: dict       # {path: full shape} of those, over the whole model
    trainable: list    # paths trained in stage 2 (stage 1 trains the attention among them)
    lr_unit: float     # a `lr_relative` stage's lr is in this unit: the RMS of the teacher's attention projections
                       # (computed only when a stage asks for it: it reads every attention weight)


# -- the steps ------------------------------------------------------------------------------------------------
def prepare_data(cfg: JobConfig, run_dir: Path) -> Shards:
    from mindedit.data.shards import DataSpec, expand, prepare
    from mindedit.data.tokenizer import load_tokenizer
    base = Path(cfg.source).parent
    tokenizer = load_tokenizer(cfg.resolve_model_path())
    spec = DataSpec(train=expand(cfg.data["train"], base, f"{cfg.source}: data.train"),
                    eval=expand(cfg.data["eval"], base, f"{cfg.source}: data.eval"),
                    seq_len=cfg.data["seq_len"], source=cfg.source)
    eos = cfg.model_shapes().eos_ids
    out = Path(run_dir) / "data"
    return Shards(out, prepare(spec, tokenizer, eos[0] if eos else 0, out, log), tokenizer)


def build(cfg: JobConfig, shards: Shards) -> Models:
    """The teacher from its files and the student made from it. Calibration for the MLA initialisers and GateSWA's
    pattern "auto": the first training tokens, one window of the eval context (long-range behaviour is what a
    sliding window loses)."""
    from mindedit.edit import edit_model
    from mindedit.edit.surgery import own_parameters, untie
    from mindedit.models import from_pretrained
    teacher = from_pretrained(cfg.resolve_model_path(), cfg.dtype)
    seq = max(cfg.data["seq_len"], cfg.eval["seq_len"])
    calibration = shards.tokens("train")[:seq].astype(np.int32)[None]
    student = edit_model(teacher, cfg.target, calibration, seed=cfg.train["seed"])
    untie(student, teacher, cfg.train["stage2"]["trainable"])
    teacher.freeze()  # (after untie: the student's own copies stay trainable)
    weights = own_parameters(student, teacher)
    return Models(teacher, student, weights, {n: tuple(p.shape) for n, p in weights.items()},
                  [n for n, p in weights.items() if p.requires_grad],
                  attention_weight_rms(teacher) if any(cfg.train[st]["lr_relative"] for st in ("stage1", "stage2"))
                  else 1.0)


def attention_weight_rms(model) -> float:
    """The RMS of every element of a model's attention q/k/v/o projection weights, over all its layers (before
    sharding: the whole tensors). Adam steps each element by about the lr whatever the weights' size, so a lr that
    suits one teacher is a ten times larger relative step on one whose weights are ten times smaller
    (SmolLM2-135M ~0.19, Qwen2.5-Coder-0.5B ~0.018: docs/distill.md); `lr_relative` stages multiply by this."""
    total, count = 0.0, 0
    for layer in model.model.layers:
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            w = getattr(layer.self_attn, name).weight.astype(ms.float32).asnumpy().astype(np.float64)
            total, count = total + float((w * w).sum()), count + w.size
    return (total / count) ** 0.5


def shard(models: Models, cfg: JobConfig, rank: int, world: int):
    """This rank's pieces of the models (sharded in place) and its Layout (mindedit.parallel)."""
    from mindedit.edit.surgery import own_parameters
    from mindedit.parallel.parallelize import parallelize
    layout = parallelize([models.teacher, models.student], cfg.dims, rank, world)
    return Models(models.teacher, models.student, own_parameters(models.student, models.teacher), models.shapes,
                  models.trainable, models.lr_unit), layout


def evaluate(cfg: JobConfig, models: Models, shards: Shards, run_dir: Path, tag: str, reuse: bool = True,
             progress: bool = True) -> dict:
    """Teacher vs student on the held-out windows at the eval context, saved as eval_<tag>.json (and read back
    from there on a rerun when ``reuse``)."""
    from mindedit.eval.compare import compare
    path = Path(run_dir) / f"eval_{tag}.json"
    if reuse and path.is_file():
        return json.loads(path.read_text())
    ev = cfg.eval
    tokens = shards.tokens("eval")
    if len(tokens) < ev["seq_len"]:
        raise MindeditError(f"{cfg.source}: eval.seq_len={ev['seq_len']}: the eval files have only {len(tokens)} "
                            f"tokens")
    log(f"eval ({tag}): teacher vs student, context {ev['seq_len']}")
    result = compare(models.teacher, models.student, tokens, ev["seq_len"], ev["max_windows"], progress=progress)
    atomic_write_json(path, result)
    return result


def task_scores(cfg: JobConfig, models: Models, shards: Shards, run_dir: Path, tag: str, tasks=None,
                limit=None, reuse: bool = True, progress: bool = True) -> dict:
    """Zero-shot task accuracies, teacher vs student (mindedit.eval.tasks): eval.tasks, the first eval.task_limit
    items of each (or ``tasks`` / ``limit`` given), saved as tasks_<tag>.json and read back on a rerun when
    ``reuse``."""
    from mindedit.eval.tasks import evaluate_tasks
    tasks = cfg.eval["tasks"] if tasks is None else tasks
    limit = cfg.eval["task_limit"] if limit is None else limit
    path = Path(run_dir) / f"tasks_{tag}.json"
    if reuse and path.is_file():
        saved = json.loads(path.read_text())
        if saved["tasks"] == list(tasks) and saved["limit"] == limit:
            return saved["scores"]
    if not tasks:
        return {}
    log(f"tasks: {', '.join(tasks)} ({f'first {limit} items each' if limit else 'all items'}), teacher vs student")
    scores = evaluate_tasks(models.teacher, models.student, shards.tokenizer, tasks, limit, progress)
    atomic_write_json(path, {"tasks": list(tasks), "limit": limit, "scores": scores})
    free_graph_memory()
    return scores


def needle_scores(cfg: JobConfig, models: Models, shards: Shards, run_dir: Path, reuse: bool = True) -> dict:
    """Needle in a haystack at eval.needle_contexts x eval.needle_depths, teacher vs student
    (mindedit.eval.needle), saved as needle.json and read back on a rerun when ``reuse``."""
    from mindedit.eval.needle import needle_grid
    ev = cfg.eval
    path = Path(run_dir) / "needle.json"
    if reuse and path.is_file():
        saved = json.loads(path.read_text())
        if saved["contexts"] == ev["needle_contexts"] and saved["depths"] == ev["needle_depths"]:
            return saved
    if not ev["needle_contexts"] or not ev["needle_depths"]:
        return {}
    grid = needle_grid(models.teacher, models.student, shards.tokenizer, ev["needle_contexts"], ev["needle_depths"],
                       cfg.train["seed"], log)
    atomic_write_json(path, grid)
    free_graph_memory()
    return grid


def learning_curve(cfg: JobConfig, models: Models, shards: Shards, run_dir: Path) -> list:
    """Teacher vs the student at each milestone training kept (before training and at eval.curve_points steps of
    each stage), on the first eval.curve_windows held-out windows at the eval context: [{stage, step, tokens,
    ppl_ratio, kl, ...}] in training order, saved as curve.json (points reused on a rerun). The models are left
    holding the final checkpoint's student."""
    from mindedit.eval.compare import compare
    from mindedit.io import checkpoint
    kept = checkpoint.milestones(run_dir)
    if not kept or not cfg.eval["curve_windows"]:
        return []
    path = Path(run_dir) / "curve.json"
    done = {p["name"]: p for p in json.loads(path.read_text())} if path.is_file() else {}
    points = []
    for file, state in kept:
        name = file.stem
        if name not in done:
            checkpoint.set_params(file, models.weights, live=True)
            log(f"curve: {name}")
            scored = compare(models.teacher, models.student, shards.tokens("eval"), cfg.eval["seq_len"],
                             cfg.eval["curve_windows"])
            done[name] = dict(name=name, stage=state["stage"], step=state["step"],
                              tokens=sum(state["tokens"].values()), predictions=scored.pop("tokens"), **scored)
            atomic_write_json(path, [done[n] for n in sorted(done, key=lambda n: done[n]["tokens"])])
        points.append(done[name])
    load_trained(models, run_dir)
    return points


def decode_speed(cfg: JobConfig, models: Models, shards: Shards) -> dict:
    """Greedy decode of eval.decode_tokens after a prompt that fills the eval context, each model with its own
    caches (steady-state tokens/s: compiles excluded); Nones when eval.decode_tokens is 0."""
    from mindedit.eval.generation import greedy_generate
    ev, out = cfg.eval, {}
    prompt = shards.tokens("eval")[:ev["seq_len"] - ev["decode_tokens"]].astype(np.int32)
    for who, model in (("teacher", models.teacher), ("student", models.student)):
        r = greedy_generate(model, prompt, max(3, ev["decode_tokens"]), eos_ids=()) if ev["decode_tokens"] else {}
        out[f"decode_tokens_per_s_{who}"] = r.get("decode_tokens_per_s")
        out[f"cache_bytes_{who}"] = r.get("cache_bytes")
        free_graph_memory()
    out["decode_prompt_tokens"] = len(prompt)
    return out


def train(cfg: JobConfig, models: Models, shards: Shards, run_dir: Path, layout=None, progress: bool = True,
          only: str = None) -> dict:
    """Both stages (or ``only`` the one named), resuming from the newest checkpoint; ``layout``: this rank's part
    of a sharded run (default: one process). Returns the tokens trained per stage."""
    from mindedit.distill.stage1 import Stage1Loss
    from mindedit.distill.stage2 import Stage2Loss
    from mindedit.distill.trainer import Stage, Trainer
    from mindedit.io import checkpoint
    from mindedit.parallel.parallelize import Layout
    from mindedit.utils.metrics import Metrics, NullMetrics
    from mindedit.data.shards import Batches
    t, s1, s2 = cfg.train, cfg.train["stage1"], cfg.train["stage2"]
    layout = layout or Layout.single()
    lead = layout.rank == 0
    say = log if lead else (lambda _: None)
    resume = checkpoint.latest(Path(run_dir) / "checkpoints", warn=say)
    metrics = Metrics(run_dir, keep_until=resume[1]["global_step"] if resume else 0) if lead else NullMetrics()
    trainer = Trainer(run_dir, models.weights, t["grad_accum"], t["checkpoint_every"], metrics, t["seed"], say,
                      progress and lead, layout, models.shapes, cfg.eval["curve_points"])
    if resume:
        checkpoint.load(resume[0], models.weights, {}, layout.take(models.weights))
        trainer.restore(resume[1])
        stage, step = resume[1]["stage"], resume[1]["step"]
        if only is not None and stage in resume[1]["done"] and stage != only:  # the previous stage's process ended
            say(f"{only}: starting from {resume[0]} ({stage} finished)")
        else:
            say(f"resuming from {resume[0]} ({stage} step {step})")

    def batches(spec):
        return Batches(shards.dir, spec["seq_len"], t["batch_size"], t["seed"], layout.coords["dp"], layout.dims.dp)
    shapes, layers = models.teacher.config, models.teacher.config.num_hidden_layers
    loss1 = Stage1Loss(models.teacher, models.student)
    loss2 = Stage2Loss(models.teacher, models.student, s2["kl"], s2["temperature"], s2["feature_layers"],
                       s2["feature_weight"], s2["ce_weight"], layout.vocab)

    def unit(spec):
        return models.lr_unit if spec["lr_relative"] else 1.0
    stages = [Stage("stage1", layout.stage1(loss1, shapes), [f"layer_{i:02d}" for i in range(layers)],
                    [n for n in models.trainable if "self_attn" in n], s1, stage_steps(cfg, "stage1"), batches(s1),
                    unit(s1)),
              Stage("stage2", layout.stage2(loss2, shapes, cfg.parallel["micro_batches"]), ["kl", "feature", "ce"],
                    models.trainable, s2, stage_steps(cfg, "stage2"), batches(s2), unit(s2))]
    for stage in stages:
        if only in (None, stage.name):
            trainer.run(stage, resume)
        free_graph_memory()
    metrics.close()
    return trainer.tokens


def load_trained(models: Models, run_dir: Path) -> dict:
    """The trained student from the final checkpoint that train_apart's processes left; returns the tokens trained
    per stage."""
    from mindedit.io import checkpoint
    found = checkpoint.latest(Path(run_dir) / "checkpoints", warn=log)
    if found is None or found[1]["done"] != ["stage1", "stage2"]:
        raise MindeditError(f"{run_dir}/checkpoints: no checkpoint of a finished stage 2 (training did not finish)")
    checkpoint.load(found[0], models.weights, {}, live=True)  # (the evaluation's graph has run)
    log(f"trained student from {found[0]}")
    return dict(found[1]["tokens"])


def export(cfg: JobConfig, models: Models, shards: Shards, out_dir: Path) -> Path:
    """The student as a directory HF transformers loads (mindedit.io.export), with the teacher's tokenizer files."""
    from mindedit.io.export import export_format, save_pretrained
    out = save_pretrained(models.student, out_dir, shards.tokenizer, cfg.resolve_model_path())
    log(f"exported {out} (format {export_format(models.student.config)})")
    return out


def export_trained(cfg: JobConfig, run_dir: Path, out_dir=None) -> Path:
    """The finished run's student exported again (``python -m mindedit export``), by default to run_dir/export."""
    shards = prepare_data(cfg, run_dir)
    models = build(cfg, shards)
    load_trained(models, run_dir)
    return export(cfg, models, shards, Path(out_dir) if out_dir else Path(run_dir) / "export")


# -- the orders of steps -------------------------------------------------------------------------------------
def run(cfg: JobConfig, run_dir: Path, progress: bool = True) -> dict:
    """The whole job: data, (sharded) training, evaluation before and after, report, export."""
    import yaml
    from mindedit.eval.report import job_report, write_report
    from mindedit.launch import train_apart
    started, run_dir = time.time(), Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.raw, sort_keys=False))
    log(f"job {cfg.name}: {cfg.target.kind} student, run directory {run_dir}")
    shards = prepare_data(cfg, run_dir)
    train_apart(cfg, run_dir, log)
    models = build(cfg, shards)
    init = evaluate(cfg, models, shards, run_dir, "init", progress=progress)
    tokens = load_trained(models, run_dir)
    final = evaluate(cfg, models, shards, run_dir, "final", progress=progress)
    curve = learning_curve(cfg, models, shards, run_dir)  # (in the evaluation's graph, before others compile)
    free_graph_memory()
    scores = task_scores(cfg, models, shards, run_dir, "final", progress=progress)
    needle = needle_scores(cfg, models, shards, run_dir)
    speed = dict(decode_speed(cfg, models, shards), **peak_rss())
    report = write_report(run_dir, job_report(cfg, models.student, init, final, tokens, speed, started, scores,
                                              needle, curve))
    export(cfg, models, shards, run_dir / "export")
    return report


def train_only(cfg: JobConfig, run_dir: Path, progress: bool = True, only: str = None):
    """Data and both training stages, or ``only`` the one named (through the launcher when sharded); no
    evaluation, report or export."""
    from mindedit.launch import train_sharded
    from mindedit.parallel.parallelize import Layout
    shards = prepare_data(cfg, run_dir)
    if cfg.dims.world > 1:
        return train_sharded(cfg, run_dir, log)
    models = build(cfg, shards)
    train(cfg, models, shards, run_dir, progress=progress, only=only)
    write_rank_summary(run_dir, models, Layout.single())


def worker(cfg: JobConfig, run_dir: Path):
    """One rank of a sharded run (started through the launcher): build, shard, train; checkpoints are the output."""
    from mindedit.parallel.comm import init_distributed
    rank, world = init_distributed()
    logs = Path(run_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"rank_{rank}.pid").write_text(f"{os.getpid()}\n")  # which process is which rank (liveness, tests)
    shards = prepare_data(cfg, run_dir)  # prepared by the launcher: only checks the manifest
    models, layout = shard(build(cfg, shards), cfg, rank, world)
    train(cfg, models, shards, run_dir, layout)
    write_rank_summary(run_dir, models, layout)


def evaluate_checkpoint(cfg: JobConfig, run_dir: Path, tasks=None, limit: int = 0) -> dict:
    """Teacher vs the student of the newest valid checkpoint (the initial student if there is none): perplexity,
    KL and agreement, or the zero-shot ``tasks`` (the first ``limit`` items of each; 0: all)."""
    from mindedit.io import checkpoint
    shards = prepare_data(cfg, run_dir)
    models = build(cfg, shards)
    found = checkpoint.latest(Path(run_dir) / "checkpoints")
    if found:
        checkpoint.load(found[0], models.weights, {})
        log(f"student from {found[0]}")
    if tasks:
        return task_scores(cfg, models, shards, run_dir, "cli", tasks, limit, reuse=False)
    return evaluate(cfg, models, shards, run_dir, "cli", reuse=False)


def peak_rss() -> dict:
    """Peak RSS in MB of this process (evaluation, export) and of the largest finished child (training), and the
    allocator they ran on (the children inherit this process's: mindedit.utils.allocator)."""
    import resource
    from mindedit.utils.allocator import active
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mb": round(max(own, children)), "peak_rss_mb_training": round(children),
            "peak_rss_mb_evaluation": round(own), "allocator": active()}


def write_rank_summary(run_dir: Path, models: Models, layout):
    """logs/rank_<r>.json: this rank's coordinates and layers, parameter bytes (shared backbone, the student's own),
    peak RSS: what a test reads to see that a sharded run really holds only its pieces."""
    import resource

    def nbytes(params):
        return int(sum(p.nbytes for p in params))
    atomic_write_json(Path(run_dir) / "logs" / f"rank_{layout.rank}.json", {
        "rank": layout.rank, **layout.coords,
        "layers": list(layout.layers if layout.layers is not None else range(len(models.student.model.layers))),
        "teacher_param_bytes": nbytes({id(p): p for p in models.teacher.get_parameters()}.values()),
        "student_own_param_bytes": nbytes(models.weights.values()),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})
