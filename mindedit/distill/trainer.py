"""The training loop shared by both stages: compiled micro-steps with gradient accumulation, AdamW with the lr
schedule, metrics, progress bar, and atomic checkpoints that make a rerun continue exactly where it stopped.

A stage is (name, loss cell, names of its aux terms, trainable parameters, stage spec, steps, batches). The loss
cell maps ids [B, T] -> (loss, aux vector); the loop does not know what the loss is.
"""
import time
from dataclasses import dataclass

import numpy as np
import mindspore as ms

from mindedit.io import checkpoint
from mindedit.distill.optim import AdamW, lr_at
from mindedit.utils.progress import Progress


@dataclass
class Stage:
    name: str              # "stage1" | "stage2"
    loss: object           # nn.Cell: ids -> (loss, aux [len(aux_names)])
    aux_names: list
    params: list           # trainable Parameters
    spec: dict             # the train.<stage> section: lr, warmup_steps, schedule, min_lr_ratio, clip, ...
    steps: int
    batches: object        # .get(position) -> ids [B, T] (mindedit.data.shards.Batches at the stage's seq_len)


class Trainer:
    """Runs stages in order for one job; ``weights`` are the student's own Parameters by model path (what a
    checkpoint holds). To resume, load the weights of checkpoint.latest(), call ``restore(state)``, then pass
    (path, state) to ``run`` for each stage: a finished stage is skipped, the interrupted one continues."""

    def __init__(self, run_dir, weights: dict, grad_accum: int, checkpoint_every: int, metrics, seed: int,
                 log=print, show_progress: bool = True):
        self.run_dir, self.weights, self.grad_accum = run_dir, weights, grad_accum
        self.every, self.metrics, self.seed, self.log = checkpoint_every, metrics, seed, log
        self.show_progress = show_progress
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
        spec = stage.spec
        opt = AdamW(stage.params, (spec["beta1"], spec["beta2"]), weight_decay=spec["weight_decay"],
                    clip=spec["clip"])
        opt_state = {p.name: p for p in opt.state()}
        start = 0
        if resume is not None and resume[1]["stage"] == stage.name:  # weights and position: restored by the job
            checkpoint.load(resume[0], {}, opt_state)
            start = resume[1]["step"]
            self.log(f"{stage.name}: resumed from {resume[0]} at step {start}/{stage.steps}")
        if stage.steps == 0 or start >= stage.steps:
            self._finish(stage, opt_state, start)
            return
        grad_fn = ms.value_and_grad(stage.loss, None, opt.params, has_aux=True)

        @ms.jit
        def micro_step(ids):
            (loss, aux), grads = grad_fn(ids)
            opt.accumulate(grads)
            return loss, aux

        tokens = self.grad_accum * stage.batches.batch * stage.batches.seq_len  # per optimizer step
        bar = Progress((stage.steps - start) * tokens, stage.name) \
            if self.show_progress else None
        for step in range(start, stage.steps):
            t0 = time.perf_counter()
            lr = lr_at(step, stage.steps, spec["lr"], spec["warmup_steps"], spec["schedule"], spec["min_lr_ratio"])
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
            if (step + 1) % self.every == 0 and step + 1 < stage.steps:
                self._checkpoint(stage.name, step + 1, opt_state)
        if bar:
            bar.close()
        self._finish(stage, opt_state, stage.steps)

    def _finish(self, stage: Stage, opt_state: dict, step: int):
        self.done.append(stage.name)
        self._checkpoint(stage.name, step, opt_state)

    def _checkpoint(self, stage: str, step: int, opt_state: dict):
        checkpoint.save(f"{self.run_dir}/checkpoints", f"{stage}-{step:06d}", self.weights, opt_state,
                        self._state(stage, step))
        self.metrics.sync_summary()
