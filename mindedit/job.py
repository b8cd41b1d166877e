"""The one place the steps of a conversion job are put in order (DESIGN.md, "The job"):

    prepare data -> load teacher -> edit (student) -> evaluate the initial student
    -> stage 1 (layer-wise) -> stage 2 (model-level) -> evaluate -> report -> export

Everything lands in ``runs/<name>/`` (config.yaml, data/, metrics.jsonl, summary/, checkpoints/, eval_init.json,
report.json, report.md, plots/, export/). Rerunning the same command resumes: data and the initial evaluation are
reused, training continues from the newest valid checkpoint, finished stages are skipped.
"""
import gc
import json
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

    def batches(self, spec: dict):
        from mindedit.data.shards import Batches
        t = self.cfg.train
        return Batches(self.run_dir / "data", spec["seq_len"], t["batch_size"], t["seed"])

    def train(self):
        from mindedit.distill.stage1 import Stage1Loss
        from mindedit.distill.stage2 import Stage2Loss
        from mindedit.distill.trainer import Stage, Trainer
        from mindedit.io import checkpoint
        from mindedit.utils.metrics import Metrics
        cfg, t = self.cfg, self.cfg.train
        resume = checkpoint.latest(self.run_dir / "checkpoints", warn=log)
        metrics = Metrics(self.run_dir, keep_until=resume[1]["global_step"] if resume else 0)
        trainer = Trainer(self.run_dir, self.weights, t["grad_accum"], t["checkpoint_every"], metrics, t["seed"], log,
                          self.progress)
        if resume:
            checkpoint.load(resume[0], self.weights, {})
            trainer.restore(resume[1])
            log(f"resuming from {resume[0]} ({resume[1]['stage']} step {resume[1]['step']})")
        s1, s2 = t["stage1"], t["stage2"]
        attention = [p for n, p in self.weights.items() if "self_attn" in n and p.requires_grad]
        stage1 = Stage("stage1", Stage1Loss(self.teacher, self.student),
                       [f"layer_{i:02d}" for i in range(len(self.student.model.layers))], attention, s1,
                       stage_steps(cfg, "stage1"), self.batches(s1))
        trainer.run(stage1, resume)
        free_graph_memory()
        stage2 = Stage("stage2", Stage2Loss(self.teacher, self.student, s2["kl"], s2["temperature"],
                                            s2["feature_layers"], s2["feature_weight"], s2["ce_weight"]),
                       ["kl", "feature", "ce"], [p for p in self.weights.values() if p.requires_grad], s2,
                       stage_steps(cfg, "stage2"), self.batches(s2))
        trainer.run(stage2, resume)
        metrics.close()
        free_graph_memory()
        return trainer.tokens

    # -- the whole job ------------------------------------------------------------------------------------------
    def run(self) -> dict:
        from mindedit.eval.kv import kv_report
        from mindedit.eval.report import write_report
        from mindedit.io.export import save_pretrained
        cfg = self.cfg
        atomic_write_text(self.run_dir / "config.yaml", Path(cfg.source).read_text())
        log(f"job {cfg.name}: {cfg.target.kind} student, run directory {self.run_dir}")
        self.prepare_data()
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


def run_job(config_path, run_dir=None, progress: bool = True) -> dict:
    from mindedit.config import load_job_config
    return Job(load_job_config(config_path), run_dir, progress).run()
