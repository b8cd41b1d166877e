"""The training loop shared by both stages: compiled micro-steps with gradient accumulation, AdamW with the lr
schedule, metrics, progress bar, and atomic checkpoints that make a rerun continue exactly where it stopped.

A stage is (name, schedule, names of its aux terms, trainable parameter paths, stage spec, steps, batches). The
schedule compiles a micro-step ids [B, T] -> (loss, aux vector); the loop does not know what the loss is.

Sharded runs (mindedit.parallel) pass their Layout: gradients are summed/averaged across ranks once per optimizer
step (in the optimizer, before clipping), the clipping norm is the global one, reported losses are the
data-parallel mean, and checkpoints hold full tensors gathered from all ranks (written by rank 0), so they load
under any layout.
"""
import time
from dataclasses import dataclass

import numpy as np
import mindspore as ms

from mindedit.io import checkpoint
from mindedit.distill.optim import AdamW, lr_at
from mindedit.parallel.comm import ReduceFromGroup
from mindedit.parallel.parallelize import Layout
from mindedit.utils.progress import Progress


@dataclass
class Stage:
    name: str              # "stage1" | "stage2"
    schedule: object       # .bind(params, accumulate) -> micro_step(ids) -> (loss, aux [len(aux_names)])
                           # (mindedit.parallel.pipeline: SingleStage, or a pipeline stage's share)
    aux_names: list
    trainable: list        # paths (model names) of the trainable parameters, over the whole model
    spec: dict             # the train.<stage> section: lr, warmup_steps, schedule, min_lr_ratio, clip, ...
    steps: int
    batches: object        # .get(position) -> ids [B, T] (mindedit.data.shards.Batches at the stage's seq_len)
    lr_unit: float = 1.0   # spec["lr"] is in this unit (`lr_relative`: the teacher's attention weight RMS)


def data_parallel_mean(micro_step, dp_sum, dp: float):
    """micro_step with its (loss, aux) averaged over the data-parallel ranks, in a compiled graph (no collective
    runs eagerly: mindedit.parallel.pipeline)."""
    @ms.jit
    def mean(loss, aux):
        return dp_sum(loss) / dp, dp_sum(aux) / dp

    def step(ids):
        return mean(*micro_step(ids))

    return step


class Trainer:
    """Runs stages in order for one job; ``weights`` are the student's own Parameters by model path (what a
    checkpoint holds). To resume, load the weights of checkpoint.latest(), call ``restore(state)``, then pass
    (path, state) to ``run`` for each stage: a finished stage is skipped, the interrupted one continues."""

    def __init__(self, run_dir, weights: dict, grad_accum: int, checkpoint_every: int, metrics, seed: int,
                 log=print, show_progress: bool = True, layout: Layout = None, shapes: dict = None,
                 milestones: int = 0):
        """weights: this rank's student Parameters by path; shapes: {path: full shape} of all of them (a sharded
        run holds pieces of some); layout: the sharded run's Layout (None: one process); milestones: the
        student's weights are also kept before training and at this many evenly spaced steps of each stage
        (checkpoint.save_milestone: the learning curve's points)."""
        self.layout = layout or Layout.single()
        self.shapes = shapes or {n: tuple(p.shape) for n, p in weights.items()}
        self.run_dir, self.weights, self.grad_accum = run_dir, weights, grad_accum
        self.every, self.metrics, self.seed, self.log = checkpoint_every, metrics, seed, log
        self.show_progress, self.milestones = show_progress, milestones
        self.position = 0          # global batches consumed (data position)
        self.global_step = 0       # optimizer steps over all stages (the summary's step axis)
        self.tokens = {}           # tokens trained per stage (on this rank)
        self.done = []             # finished stages

    def restore(self, state: dict):
        self.position, self.global_step = state["data_position"], state["global_step"]
        self.tokens, self.done = dict(state["tokens"]), list(state["done"])

    def _state(self, stage: str, step: int) -> dict:
        return {"stage": stage, "step": step, "data_position": self.position, "global_step": self.global_step,
                "tokens": self.tokens, "done": self.done, "seed": self.seed}

    def run(self, stage: Stage, resume=None):
        """Trains one stage to its step budget, from the checkpoint ``resume`` if it belongs to this stage."""
        if stage.name in self.done:
            self.log(f"{stage.name}: already finished (checkpoint), skipped")
            return
        spec, layout = stage.spec, self.layout
        params = [self.weights[n] for n in stage.trainable if n in self.weights]
        opt = AdamW(params, (spec["beta1"], spec["beta2"]), weight_decay=spec["weight_decay"], clip=spec["clip"],
                    grad_reducer=layout.grad_reducer(params), norm_weights=layout.norm_weights(params),
                    norm_reduce=ReduceFromGroup(layout.world), row_relative=spec["row_relative"])
        opt_state = {p.name: p for p in opt.state()}
        opt_io = self._optimizer_io(stage, opt_state)
        start = 0
        if resume is not None and resume[1]["stage"] == stage.name:  # weights and position: restored by the job
            checkpoint.load(resume[0], {}, opt_state, layout.take(opt_state, opt_io[1]))
            start = resume[1]["step"]
            self.log(f"{stage.name}: resumed from {resume[0]} at step {start}/{stage.steps}")
        if stage.steps == 0 or start >= stage.steps:
            self._finish(stage, opt_state, start, opt_io)
            return
        if spec["lr_relative"]:
            self.log(f"{stage.name}: lr {spec['lr']:.3g} x the teacher's attention weight RMS {stage.lr_unit:.4g} = "
                     f"{spec['lr'] * stage.lr_unit:.3g} at its peak")
        if self.milestones and self.global_step == 0:
            self._milestone(stage.name, 0)  # before any training: the curve's first point
        kept = {round(stage.steps * k / self.milestones) for k in range(1, self.milestones + 1)} \
            if self.milestones else set()
        micro_step = data_parallel_mean(stage.schedule.bind(opt.params, opt.accumulate), ReduceFromGroup(layout.dp),
                                        float(layout.dp.size))

        tokens = self.grad_accum * stage.batches.batch * stage.batches.seq_len  # per optimizer step
        bar = Progress((stage.steps - start) * tokens, stage.name) \
            if self.show_progress else None
        for step in range(start, stage.steps):
            t0 = time.perf_counter()
            lr = lr_at(step, stage.steps, spec["lr"] * stage.lr_unit, spec["warmup_steps"], spec["schedule"],
                       spec["min_lr_ratio"])
            loss, aux = 0.0, np.zeros(len(stage.aux_names))
            for _ in range(self.grad_accum):
                ids = ms.Tensor(stage.batches.get(self.position))
                self.position += 1
                l, a = micro_step(ids)
                loss, aux = loss + float(l.asnumpy()), aux + a.asnumpy()
            if not np.isfinite(loss):  # stop before the update spoils the weights; checkpoints stay clean
                raise FloatingPointError(f"{stage.name} step {step + 1}: the loss is {loss} (lr {lr:.3g}); the "
                                         f"newest checkpoint in {self.run_dir}/checkpoints is from before it")
            norm = float(opt.apply(ms.Tensor(lr, ms.float32), ms.Tensor(float(self.grad_accum), ms.float32)).asnumpy())
            self.tokens[stage.name] = self.tokens.get(stage.name, 0) + tokens
            self.global_step += 1
            seconds = time.perf_counter() - t0
            row = {"stage": stage.name, "step": step + 1, "global_step": self.global_step, "time": time.time(),
                   "loss": loss / self.grad_accum, "lr": lr, "grad_norm": norm, "tokens": self.tokens[stage.name],
                   "tokens_per_s": tokens / seconds}
            row.update({n: float(v) / self.grad_accum for n, v in zip(stage.aux_names, aux)})
            self.metrics.log(row)
            if bar:
                bar.update(tokens, f"step {step + 1}/{stage.steps} loss {row['loss']:.4g}")
            if step + 1 in kept:
                self._milestone(stage.name, step + 1)
            if (step + 1) % self.every == 0 and step + 1 < stage.steps:
                self._checkpoint(stage.name, step + 1, opt_state, opt_io)
        if bar:
            bar.close()
        self._finish(stage, opt_state, stage.steps, opt_io)

    def _milestone(self, stage: str, step: int):
        weights = self.layout.gather(self.weights, self.shapes)
        if self.layout.rank == 0:
            checkpoint.save_milestone(self.run_dir, f"{stage}-{step:06d}", weights, self._state(stage, step))

    def _optimizer_io(self, stage: Stage, opt_state: dict) -> tuple:
        """({optimizer state name: full shape} over the whole model, {name: the Parameter whose Spec it follows})."""
        prefixes = ("adam_m", "adam_v") + (("master",) if any(n.startswith("master.") for n in opt_state) else ())
        shapes, follows = {"adam_step": ()}, {}
        for n in stage.trainable:
            for prefix in prefixes:
                key = f"{prefix}.student.{n}"
                shapes[key] = self.shapes[n]
                if n in self.weights:
                    follows[key] = self.weights[n]
        return shapes, follows

    def _finish(self, stage: Stage, opt_state: dict, step: int, opt_io: tuple):
        self.done.append(stage.name)
        self._checkpoint(stage.name, step, opt_state, opt_io)

    def _checkpoint(self, stage: str, step: int, opt_state: dict, opt_io: tuple):
        weights = self.layout.gather(self.weights, self.shapes)
        optimizer = self.layout.gather(opt_state, *opt_io)
        if self.layout.rank == 0:
            checkpoint.save(f"{self.run_dir}/checkpoints", f"{stage}-{step:06d}", weights, optimizer,
                            self._state(stage, step))
            self.metrics.sync_summary()
