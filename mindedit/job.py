"""The one place the steps of a conversion job are put in order (DESIGN.md, "The job"):

    prepare data -> load teacher -> edit (student) -> evaluate the initial student
    -> stage 1 (layer-wise) -> stage 2 (model-level) -> evaluate -> report -> export

Everything lands in ``runs/<name>/`` (config.yaml, data/, metrics.jsonl, summary/, checkpoints/, eval_init.json,
report.json, report.md, plots/, export/, logs/ of a sharded run). Rerunning the same command resumes: data and
the initial evaluation are reused, training continues from the newest valid checkpoint, finished stages are
skipped.

A sharded job (``parallel:`` with dp * tp * pp > 1) trains in worker processes started through msrun
(cluster/msrun.py), each running ``train_worker``; their checkpoints hold full tensors, so this process then
continues as in a one-process run: it finds both stages finished, evaluates, reports and exports.
"""
import gc
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import mindspore as ms

from mindedit.config import JobConfig, stage_steps
from mindedit.utils.files import atomic_write_json, atomic_write_text


def log(msg: str):
    print(msg, flush=True)


def free_graph_memory():
    """Compiled graphs keep their buffers; drop them between phases (docs/environment.md)."""
    gc.collect()
    ms.ms_memory_recycle()


class Job:
    def __init__(self, cfg: JobConfig, run_dir=None, progress: bool = True):
        if cfg.data is None:
            raise ValueError(f"{cfg.source}: data: required for a training job (train and eval text files)")
        self.cfg = cfg
        self.run_dir = Path(run_dir or Path("runs") / cfg.name)
        self.progress = progress
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.started = time.time()

    # -- steps -------------------------------------------------------------------------------------------------
    def prepare_data(self) -> dict:
        from mindedit.data.shards import DataSpec, expand, prepare
        from mindedit.data.tokenizer import load_tokenizer
        cfg, base = self.cfg, Path(self.cfg.source).parent
        self.tokenizer = load_tokenizer(cfg.resolve_model_path())
        spec = DataSpec(train=expand(cfg.data["train"], base, f"{cfg.source}: data.train"),
                        eval=expand(cfg.data["eval"], base, f"{cfg.source}: data.eval"),
                        seq_len=cfg.data["seq_len"], source=cfg.source)
        eos = cfg.model_shapes().eos_ids
        self.manifest = prepare(spec, self.tokenizer, eos[0] if eos else 0, self.run_dir / "data", log)
        return self.manifest

    def build_models(self):
        from mindedit.data.shards import load_tokens
        from mindedit.edit import edit_model
        from mindedit.edit.surgery import own_parameters, untie
        from mindedit.models import from_pretrained
        cfg = self.cfg
        self.teacher = from_pretrained(cfg.resolve_model_path(), cfg.dtype)
        # calibration for the MLA initialisers and GateSWA's pattern "auto": the first training tokens, one window
        # of the eval context (long-range behaviour is what a sliding window loses)
        seq = max(cfg.data["seq_len"], cfg.eval["seq_len"])
        calibration = np.asarray(load_tokens(self.run_dir / "data", "train")[:seq], np.int32)[None]
        self.student = edit_model(self.teacher, cfg.target, calibration, seed=cfg.train["seed"])
        untie(self.student, self.teacher, cfg.train["stage2"]["trainable"])
        self.weights = own_parameters(self.student, self.teacher)
        # the whole model's view, kept when a sharded run replaces these with its pieces
        self.shapes = {n: tuple(p.shape) for n, p in self.weights.items()}
        self.trainable = [n for n, p in self.weights.items() if p.requires_grad]

    def evaluate(self, tag: str, reuse: bool = True) -> dict:
        """Teacher vs student on the held-out windows at the eval context, saved as eval_<tag>.json (and read
        back from there on a rerun when ``reuse``)."""
        from mindedit.data.shards import load_tokens
        from mindedit.eval.compare import compare
        path = self.run_dir / f"eval_{tag}.json"
        if reuse and path.is_file():
            return json.loads(path.read_text())
        ev = self.cfg.eval
        tokens = load_tokens(self.run_dir / "data", "eval")
        if len(tokens) < ev["seq_len"]:
            raise ValueError(f"{self.cfg.source}: eval.seq_len={ev['seq_len']}: the eval files have only "
                             f"{len(tokens)} tokens")
        log(f"eval ({tag}): teacher vs student, context {ev['seq_len']}")
        result = compare(self.teacher, self.student, np.asarray(tokens), ev["seq_len"], ev["max_windows"],
                         progress=self.progress)
        free_graph_memory()
        atomic_write_json(path, result)
        return result

    def decode_speed(self) -> dict:
        """Greedy decode of eval.decode_tokens after a prompt that fills the eval context, each model with its
        own caches (steady-state tokens/s: compiles excluded)."""
        from mindedit.data.shards import load_tokens
        from mindedit.eval.generation import greedy_generate
        ev = self.cfg.eval
        prompt = np.asarray(load_tokens(self.run_dir / "data", "eval")[:ev["seq_len"] - ev["decode_tokens"]],
                            np.int32)
        out = {}
        for who, model in (("teacher", self.teacher), ("student", self.student)):
            r = greedy_generate(model, prompt, max(3, ev["decode_tokens"]), eos_ids=())
            out[f"decode_tokens_per_s_{who}"] = r["decode_tokens_per_s"]
            out[f"cache_bytes_{who}"] = r["cache_bytes"]
            free_graph_memory()
        out["decode_prompt_tokens"] = len(prompt)
        return out

    def batches(self, spec: dict, layout):
        from mindedit.data.shards import Batches
        t = self.cfg.train
        return Batches(self.run_dir / "data", spec["seq_len"], t["batch_size"], t["seed"], layout.coords["dp"],
                       layout.dims.dp)

    def train(self, layout=None):
        """Both stages, resuming from the newest checkpoint; ``layout``: this rank's part of a sharded run."""
        from mindedit.distill.stage1 import Stage1Loss
        from mindedit.distill.stage2 import Stage2Loss
        from mindedit.distill.trainer import Stage, Trainer
        from mindedit.io import checkpoint
        from mindedit.parallel.parallelize import Layout
        from mindedit.utils.metrics import Metrics, NullMetrics
        cfg, t = self.cfg, self.cfg.train
        layout = layout or Layout.single()
        lead = layout.rank == 0
        resume = checkpoint.latest(self.run_dir / "checkpoints", warn=log if lead else lambda _: None)
        metrics = Metrics(self.run_dir, keep_until=resume[1]["global_step"] if resume else 0) if lead \
            else NullMetrics()
        trainer = Trainer(self.run_dir, self.weights, t["grad_accum"], t["checkpoint_every"], metrics, t["seed"],
                          log if lead else lambda _: None, self.progress and lead, layout, self.shapes)
        if resume:
            checkpoint.load(resume[0], self.weights, {}, layout.take(self.weights))
            trainer.restore(resume[1])
            if lead:
                log(f"resuming from {resume[0]} ({resume[1]['stage']} step {resume[1]['step']})")
        s1, s2 = t["stage1"], t["stage2"]
        layers = len(self.student.model.layers)
        loss1 = Stage1Loss(self.teacher, self.student)
        loss2 = Stage2Loss(self.teacher, self.student, s2["kl"], s2["temperature"], s2["feature_layers"],
                           s2["feature_weight"], s2["ce_weight"], layout.vocab)
        if layout.dims.pp > 1:
            from mindedit.parallel.pipeline import PipelineStage1Loss, PipelineStage2
            hidden = self.teacher.config.hidden_size
            loss1 = PipelineStage1Loss(loss1, layout.layers, layers, layout.prev, layout.next, layout.pp, hidden)
            loss2 = PipelineStage2(loss2, layout.layers, layout.prev, layout.next, layout.pp,
                                   cfg.parallel["micro_batches"], hidden)
        stage1 = Stage("stage1", loss1, [f"layer_{i:02d}" for i in range(layers)],
                       [n for n in self.trainable if "self_attn" in n], s1, stage_steps(cfg, "stage1"),
                       self.batches(s1, layout))
        trainer.run(stage1, resume)
        free_graph_memory()
        stage2 = Stage("stage2", loss2, ["kl", "feature", "ce"], self.trainable, s2, stage_steps(cfg, "stage2"),
                       self.batches(s2, layout))
        trainer.run(stage2, resume)
        metrics.close()
        free_graph_memory()
        return trainer.tokens

    def train_worker(self):
        """One rank of a sharded run (started by msrun): build, shard, train; checkpoints are the output."""
        from mindedit.edit.surgery import own_parameters
        from mindedit.parallel.comm import init_distributed
        from mindedit.parallel.parallelize import parallelize
        rank, world = init_distributed()
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"rank_{rank}.pid").write_text(f"{os.getpid()}\n")  # which process is which rank (liveness, tests)
        self.prepare_data()  # prepared by the launcher: only checks the manifest
        self.build_models()
        layout = parallelize([self.teacher, self.student], self.cfg.dims, rank, world)
        self.weights = own_parameters(self.student, self.teacher)
        self.train(layout)
        self.write_rank_summary(layout)

    def write_rank_summary(self, layout):
        """logs/rank_<r>.json: this rank's coordinates, parameter bytes (shared backbone, student's own), peak RSS."""
        import resource

        def nbytes(params):
            return int(sum(p.nbytes for p in params))
        teacher = {id(p): p for p in self.teacher.get_parameters()}
        own = {id(p): p for p in self.weights.values()}
        atomic_write_json(self.run_dir / "logs" / f"rank_{layout.rank}.json", {
            "rank": layout.rank, **layout.coords,
            "layers": list(layout.layers if layout.layers is not None else range(len(self.student.model.layers))),
            "teacher_param_bytes": nbytes(teacher.values()), "student_own_param_bytes": nbytes(own.values()),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "seconds": time.time() - self.started})

    def train_only(self):
        """Data and both training stages (through msrun when sharded); no evaluation, report or export."""
        self.prepare_data()
        if self.cfg.dims.world > 1:
            self.launch_workers()
            return
        self.build_models()
        from mindedit.parallel.parallelize import Layout
        self.train()
        self.write_rank_summary(Layout.single())

    def worker_args(self) -> list:
        cfg = self.cfg
        args = ["--config", str(Path(cfg.source).resolve()), "--run-dir", str(self.run_dir.resolve())]
        for item in cfg.overrides:
            args += ["--set", item]
        return args

    def launch_plan(self) -> list:
        """Per node, what will run (cluster/launch.py); writes runs/<name>/rank_table.json when the device IPs are
        known or the rank-table launcher needs them."""
        from cluster.launch import plan_nodes, read_remote_file
        from cluster.ranktable import collect_device_ips, rank_table
        cluster, table = self.cfg.cluster, None
        if cluster.launcher == "rank_table":
            collect_device_ips(cluster, lambda node: read_remote_file(cluster, node))
        if all(n.device_ips is not None for n in cluster.nodes) and not cluster.local:
            table = self.run_dir / "rank_table.json"
            atomic_write_json(table, rank_table(cluster))
        return plan_nodes(cluster, self.worker_args(), self.run_dir, table)

    def launch_workers(self):
        from cluster.launch import run_nodes
        run_nodes(self.launch_plan(), self.run_dir, log=log)

    def dry_run(self) -> str:
        """What ``run`` would start, per node, plus the memory plan; starts nothing."""
        from cluster.launch import describe
        from mindedit.parallel.plan import estimate, format_plan
        cfg = self.cfg
        lines = [f"job {cfg.name}: {cfg.dims.world} ranks on {len(cfg.cluster.nodes)} node(s), launcher "
                 f"{cfg.cluster.launcher}, master {cfg.cluster.master_host}:{cfg.cluster.master_port or '(free port)'}",
                 describe(self.launch_plan())]
        table = self.run_dir / "rank_table.json"
        lines.append(f"rank table: {table}" if table.is_file() else "rank table: not written (no device IPs: the "
                     "msrun launcher does not need one)")
        lines.append(format_plan(cfg, estimate(cfg, 64 * 2 ** 30)))
        return "\n".join(lines)

    # -- the whole job ------------------------------------------------------------------------------------------
    def run(self) -> dict:
        import yaml
        from mindedit.eval.kv import kv_report
        from mindedit.eval.report import write_report
        from mindedit.io.export import save_pretrained
        cfg = self.cfg
        atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(cfg.raw, sort_keys=False))
        log(f"job {cfg.name}: {cfg.target.kind} student, run directory {self.run_dir}")
        self.prepare_data()
        if cfg.dims.world > 1:
            d = cfg.dims
            log(f"parallel: dp={d.dp} tp={d.tp} pp={d.pp} ep={d.ep}: {d.world} ranks train, this process "
                f"evaluates and exports")
            self.launch_workers()
        self.build_models()
        init = self.evaluate("init")
        tokens = self.train()
        final = self.evaluate("final")
        speed = self.decode_speed() if cfg.eval["decode_tokens"] else {
            f"{k}_{who}": None for k in ("decode_tokens_per_s", "cache_bytes") for who in ("teacher", "student")}
        kv = kv_report(self.teacher.config, cfg.target, sorted({cfg.eval["seq_len"], *cfg.contexts}),
                       cfg.kv_dtype_bytes)
        at_eval = next(r for r in kv["contexts"] if r["context"] == cfg.eval["seq_len"])
        report = {
            "name": cfg.name, "target": cfg.target.kind, "eval_context": cfg.eval["seq_len"],
            "eval_tokens": final["tokens"],
            "teacher_ppl": final["teacher_ppl"], "student_ppl_init": init["student_ppl"],
            "student_ppl": final["student_ppl"], "ppl_ratio": final["ppl_ratio"],
            "kl_init": init["kl"], "kl": final["kl"],
            "top1_agreement_init": init["top1_agreement"], "top1_agreement": final["top1_agreement"],
            "kv_reduction": at_eval["reduction"], "kv": kv,
            "attention": asdict(self.student.target), "window_errors": self.student.window_errors,
            "tokens_stage1": tokens.get("stage1", 0), "tokens_stage2": tokens.get("stage2", 0),
            **speed, "minutes": (time.time() - self.started) / 60,
        }
        write_report(self.run_dir, report)
        save_pretrained(self.student, self.run_dir / "export", self.tokenizer)
        log(f"exported {self.run_dir / 'export'}")
        return report


def run_job(config_path, run_dir=None, progress: bool = True, overrides=()) -> dict:
    from mindedit.config import load_job_config
    return Job(load_job_config(config_path, overrides), run_dir, progress).run()
