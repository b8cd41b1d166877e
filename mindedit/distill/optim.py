"""AdamW with global-norm clipping, gradient accumulation and optional fp32 master weights, plus the learning-rate
schedule. Built here (rather than with the nn.AdamWeightDecay optimizer) so that every piece of optimizer state is a
named Parameter a checkpoint can save and restore exactly, and the learning rate is a per-step input; each
tensor's update is one ``ops.AdamWeightDecay`` kernel (the bias correction folded into its learning rate).

Step protocol: ``accumulate(grads)``, inside the compiled micro-step, adds one micro-batch's gradients into
``acc``; ``apply(lr, micro_batches)`` (compiled) averages them, clips, updates and clears ``acc``; it returns the
pre-clip norm. Both map one function over the tensors (``ops.HyperMap``) instead of looping in Python.
Weight decay is decoupled and applied to matrices only (not to norms, biases, gates or sink logits).
``row_relative``: each row of a matrix steps at most in proportion to its own scale: a row whose RMS is below the
matrix's RMS has its update scaled by that ratio (recomputed every step from the weights, so a resumed run steps
alike). Adam's step is the same size for every element whatever its magnitude; the rows of a factorised init
(MLA's latent down-projection, its rope query rows) span four orders of magnitude, and one plain step can move the
smallest by many times their size (docs/distill.md, "Qwen2.5-Coder-0.5B").
Parameters stored in bf16/fp16 (Ascend) are updated through fp32 master copies.
"""
import math

import mindspore as ms
from mindspore import Parameter, ParameterTuple, mint, nn, ops


class AdamW(nn.Cell):
    def __init__(self, params, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, clip=1.0, grad_reducer=None,
                 norm_weights=None, norm_reduce=None, row_relative=False):
        """Sharded runs (mindedit.parallel): ``grad_reducer`` sums/averages the accumulated gradients across ranks
        once per step, before clipping (after the whole pipeline schedule, so every rank issues its collectives in
        one order); each parameter's squared norm is weighted by ``norm_weights`` (1 / ranks holding the same
        piece) and summed over the world by ``norm_reduce``, so that the clipping norm is the global one."""
        super().__init__(auto_prefix=False)
        self.params = ParameterTuple(params)
        self.grad_reducer = grad_reducer
        self.norm_weights = tuple(norm_weights or (1.0,) * len(self.params))
        self.norm_reduce = norm_reduce
        self.b1, self.b2, self.eps, self.clip = betas[0], betas[1], eps, clip
        self.decay = tuple(weight_decay if p.ndim >= 2 else 0.0 for p in self.params)
        self.relative = tuple(i for i, p in enumerate(self.params) if row_relative and p.ndim == 2)
        self.master_weights = any(p.dtype != ms.float32 for p in self.params)

        def zeros(prefix):
            return ParameterTuple(Parameter(mint.zeros(p.shape, dtype=ms.float32), name=f"{prefix}.{p.name}",
                                            requires_grad=False) for p in self.params)

        self.m, self.v, self.acc = zeros("adam_m"), zeros("adam_v"), zeros("grad_acc")
        if self.master_weights:
            self.master = ParameterTuple(Parameter(p.value().astype(ms.float32), name=f"master.{p.name}",
                                                   requires_grad=False) for p in self.params)
        self.t = Parameter(ms.Tensor(0, ms.int32), name="adam_step", requires_grad=False)
        self.update = ops.AdamWeightDecay()  # one kernel per tensor: m, v and w in place
        self.map = ops.HyperMap()

        # a sharded run's gradient reducer loops over the tensors, one nested graph call per statement: a whole
        # model's worth passes MindSpore's default depth of 1000
        ms.set_recursion_limit(max(1000, 12 * len(self.params)))
        # compiled through a closure: jitting a cell's method directly confuses later graphs (docs/environment.md)
        def apply(lr, micro_batches):
            return self._apply(lr, micro_batches)

        self.apply = ms.jit(apply)

    def state(self) -> list:
        """Every Parameter that must be checkpointed for an exact resume (acc is empty between steps)."""
        return list(self.m) + list(self.v) + ([self.t] + list(self.master) if self.master_weights else [self.t])

    def accumulate(self, grads):
        """Adds one micro-batch's gradients (call it inside the compiled micro-step)."""
        return ops.depend(self.t, self.map(_add_into, self.acc, grads))

    def _apply(self, lr, micro_batches):
        # the per-tensor work as HyperMaps, which the compiler expands after parsing: a Python loop over the ~200
        # tensors parsed into one nested graph per statement, and compiling it took 23-25 s (now ~3)
        grads = self.map(ops.partial(_divide, micro_batches), self.acc)
        if self.grad_reducer is not None:
            grads = self.grad_reducer(grads)
        sq = ops.addn(self.map(_weighted_square, self.norm_weights, grads))
        norm = ops.sqrt(self.norm_reduce(sq) if self.norm_reduce is not None else sq)
        scale = mint.clamp(self.clip / (norm + 1e-6), max=1.0) if self.clip > 0 else ops.ones((), ms.float32)
        ops.assign_add(self.t, ops.ones((), ms.int32))
        t = self.t.astype(ms.float32)
        step = lr * ops.sqrt(1.0 - ops.pow(self.b2, t)) / (1.0 - ops.pow(self.b1, t))
        weights = self.master if self.master_weights else self.params
        relative = tuple(weights[i] for i in self.relative)
        before = self.map(_copy, relative) if relative else ()
        # w -= step * (m / (sqrt(v) + eps) + decay' * w), with decay' = lr * decay / step: the decoupled decay
        # lr * decay * w, as the bias correction is folded into step
        done = self.map(ops.partial(_update, self.update, self.b1, self.b2, self.eps, step, lr, scale), self.decay,
                        weights, self.m, self.v, self.acc, grads)
        if relative:
            done = self.map(_row_relative, ops.depend(before, done), relative)
        if self.master_weights:  # (the kernel's outputs are not the updated tensors on CPU: read the master)
            done = self.map(_cast_into, self.params, ops.depend(weights, done))
        return ops.depend(norm, done)


_add_into = ops.MultitypeFuncGraph("add_into")
_divide = ops.MultitypeFuncGraph("divide")
_weighted_square = ops.MultitypeFuncGraph("weighted_square")
_copy = ops.MultitypeFuncGraph("copy")
_update = ops.MultitypeFuncGraph("adamw_update")
_row_relative = ops.MultitypeFuncGraph("row_relative")
_cast_into = ops.MultitypeFuncGraph("cast_into")


@_add_into.register("Tensor", "Tensor")
def _(acc, g):
    return ops.assign_add(acc, g.astype(ms.float32))


@_divide.register("Tensor", "Tensor")
def _(n, acc):
    return acc / n


@_weighted_square.register("Number", "Tensor")
def _(w, g):
    return w * (g * g).sum()


@_copy.register("Tensor")
def _(w):
    return w * 1.0


@_update.register("Function", "Number", "Number", "Number", "Tensor", "Tensor", "Tensor", "Number", "Tensor", "Tensor",
                  "Tensor", "Tensor", "Tensor")
def _(update, b1, b2, eps, step, lr, scale, decay, w, m, v, acc, grad):
    """One tensor's AdamW step (one kernel: m, v and w in place), then its accumulator cleared."""
    done = update(w, m, v, step, b1, b2, eps, lr * decay / step, grad * scale)
    return ops.assign(acc, ops.depend(ops.zeros_like(acc), done))


@_row_relative.register("Tensor", "Tensor")
def _(before, w):
    """w set to ``before`` plus its step, each row's step scaled by min(1, its RMS / the matrix's RMS) (rows of an
    all-zero matrix: 1)."""
    rows = ops.sqrt((before * before).mean(axis=1, keep_dims=True))
    whole = ops.sqrt((before * before).mean())
    ratio = rows / mint.maximum(whole, ops.ones_like(whole) * 1e-30)
    scale = mint.where(rows >= whole, ops.ones_like(rows), ratio)
    return ops.assign(w, before + scale * (w - before))


@_cast_into.register("Tensor", "Tensor")
def _(p, master):
    return ops.assign(p, master.astype(p.dtype))


def lr_at(step: int, total: int, peak: float, warmup: int, schedule: str = "cosine", min_ratio: float = 0.1) -> float:
    """Linear warmup over ``warmup`` steps to ``peak``, then cosine or linear decay to ``min_ratio * peak`` at
    ``total`` (``constant`` keeps the peak). ``step`` counts from 0."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return peak
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 0.5 * (1.0 + math.cos(math.pi * frac)) if schedule == "cosine" else 1.0 - frac
    return peak * (min_ratio + (1.0 - min_ratio) * shape)
