"""Pipeline parallelism: contiguous layer stages, activations passed between neighbouring stages.

Point to point: the CPU backend has no send/recv and its Broadcast refuses any group but the world, so a transfer
from stage s to s + 1 is a SUM all-reduce inside the two-rank group {s, s + 1} where the receiver contributes
zeros (on Ascend the same call sites would take HCCL send/recv; not built here: docs/parallel.md).

Stage 1 (layer-wise): activations only flow forward. Each stage receives the teacher's hidden state, taps its own
layers, trains its own student attentions, and sends the hidden state on; one pass, no backward traffic.

Stage 2 (model-level), GPipe: the batch is cut into ``micro_batches``; every stage runs all forwards (sending
teacher and student hidden states on), then all backwards in reverse order (sending the gradient of its input
back). A stage's backward recomputes its forward (activation recomputation) and differentiates
    last stage:   its loss terms (KL, CE, feature terms of its layers)
    other stages: its feature terms + <student output, gradient received for it>
with respect to its parameters and its student input. 1F1B would reorder the same calls; it needs paired
send/recv to avoid deadlock with blocking all-reduce transfers, so it is not offered on this backend.
"""
import mindspore as ms
from mindspore import nn, ops

from mindedit.parallel.comm import Group, ReduceFromGroup


class Transfer(nn.Cell):
    """One direction of a neighbour link: ``send(x)`` on one side, ``recv(like)`` on the other (same shapes)."""

    def __init__(self, grp: Group):
        super().__init__()
        self.sum = ReduceFromGroup(grp)

    def send(self, x):
        return self.sum(x)

    def recv(self, like):
        return self.sum(ops.zeros_like(like))


class SingleStage:
    """The schedule without a pipeline: one compiled forward and backward of the whole loss cell (ids -> (loss,
    aux)) per micro-batch. Every schedule has the trainer's one protocol: ``bind(params, accumulate)`` compiles
    and returns ``micro_step(ids) -> (loss, aux)``, which adds this rank's gradients through ``accumulate``."""

    def __init__(self, loss):
        self.loss = loss

    def bind(self, params, accumulate):
        grad_fn = ms.value_and_grad(self.loss, None, params, has_aux=True)

        @ms.jit
        def micro_step(ids):
            (loss, aux), grads = grad_fn(ids)
            accumulate(grads)
            return loss, aux

        return micro_step


class PipelineStage1Loss(nn.Cell):
    """Stage 1 (mindedit.distill.stage1.Stage1Loss, split by layers) on one pipeline stage:
    (ids) -> (total over all stages, per-layer losses [L] over all stages)."""

    def __init__(self, loss, layers, num_layers: int, prev: Group, nxt: Group, pp: Group, hidden: int):
        super().__init__(auto_prefix=False)
        self.loss, self.teacher_body, self.hidden = loss, loss.teacher_body, hidden
        self.layers, self.num_layers = tuple(layers), num_layers
        self.first, self.last = prev is None, nxt is None
        self.prev = Transfer(prev) if prev is not None else None
        self.next = Transfer(nxt) if nxt is not None else None
        self.pp_sum = ReduceFromGroup(pp)

    def construct(self, ids):
        b, t = ids.shape
        if self.first:
            x = self.teacher_body.embed_tokens(ids)
        else:
            x = self.prev.recv(ops.zeros((b, t, self.hidden), ms.float32))
        losses = ()
        for i in range(self.num_layers):  # other stages' layers count zero here; the pp sum fills them in
            if i in self.layers:
                x, h, y = self.teacher_body.layers[i].attention_io(x)
                losses = losses + (self.loss.layer_loss(i, h, y),)
            else:
                losses = losses + (ops.zeros((), ms.float32),)
        per_layer = ops.stack(losses)
        if not self.last:  # the send comes before the pp sum on every stage: one order of collectives everywhere
            per_layer = ops.depend(per_layer, self.next.send(ops.stop_gradient(x).astype(ms.float32)))
        per_layer = self.pp_sum(per_layer)
        return per_layer.sum(), per_layer


class _Stage2Piece(nn.Cell):
    """This stage's share of stage 2 (the terms of mindedit.distill.stage2.Stage2Loss, split by layers):
    (ids, teacher in, student in, gradient of student out) -> (objective to differentiate, teacher out, student
    out, [kl, feature, ce] terms of this stage)."""

    def __init__(self, loss, layers, first: bool, last: bool):
        super().__init__(auto_prefix=False)
        self.loss, self.layers, self.first, self.last = loss, tuple(layers), first, last

    def construct(self, ids, t_x, s_x, ds_out):
        kl, feature, ce, t_x, s_x = self.loss.stage_terms(ids, t_x, s_x, self.layers, self.first, self.last)
        objective = self.loss.total(kl, feature, ce)
        if not self.last:
            objective = objective + (s_x.astype(ms.float32) * ops.stop_gradient(ds_out)).sum()
        return objective, ops.stop_gradient(t_x), s_x, ops.stack((kl, feature, ce))


class PipelineStage2:
    """GPipe stage 2 for one rank, a schedule like SingleStage: its micro-step runs every micro-batch's forward and
    backward through the pipeline, adds this rank's gradients to ``accumulate`` (the optimizer reduces them across
    ranks after the schedule, so no gradient collective interleaves with the transfers) and returns (loss, aux).

    Every transfer happens inside a compiled graph, one message per micro-batch and direction (teacher and student
    states travel stacked as one [2, rows, T, hidden] tensor), so no collective runs eagerly: with eager
    transfers a fresh machine failed the first backward compile with "Resolve class Parameter error: cannot find
    name attr for obj" (docs/environment.md, issue 12)."""

    def __init__(self, loss, layers, prev: Group, nxt: Group, pp: Group, micro_batches: int, hidden: int):
        self.piece = _Stage2Piece(loss, layers, prev is None, nxt is None)
        self.prev = Transfer(prev) if prev is not None else None
        self.next = Transfer(nxt) if nxt is not None else None
        self.pp_sum = ReduceFromGroup(pp)
        self.m, self.hidden = micro_batches, hidden

    def bind(self, params, accumulate):
        """Compiles this rank's forward, backward and the final sum of the loss terms over the stages."""
        piece, prev, nxt, pp_sum = self.piece, self.prev, self.next, self.pp_sum
        first, last = prev is None, nxt is None
        grad_fn = ms.value_and_grad(piece, grad_position=None if first else 2, weights=params, has_aux=True)

        @ms.jit
        def forward(ids, zeros):
            """zeros [2, rows, T, hidden] -> (teacher and student inputs received, what was sent on)."""
            x = zeros if first else prev.recv(zeros)
            _, t_out, s_out, _ = piece(ids, x[0], x[1], zeros[0])
            out = ops.stack((t_out.astype(ms.float32), s_out.astype(ms.float32)))
            return x, (out if last else nxt.send(out))

        @ms.jit
        def backward(ids, x, zeros, scale):
            """Recomputes this stage's forward on its saved inputs x and differentiates it; sends the gradient of
            the student input back. Returns this stage's [kl, feature, ce]."""
            ds_out = zeros if last else nxt.recv(zeros)
            (_, _, _, terms), grads = grad_fn(ids, x[0], x[1], ds_out)
            if first:
                param_grads = grads
            else:
                ds_in, param_grads = grads
                terms = ops.depend(terms, prev.send(ds_in.astype(ms.float32)))
            accumulate(tuple(g * scale for g in param_grads))
            return terms

        @ms.jit
        def over_stages(aux):
            return pp_sum(aux)

        self._forward, self._backward, self._over_stages = forward, backward, over_stages
        return self._micro_step

    def _micro_step(self, ids):
        b, t = ids.shape
        if b % self.m:
            raise ValueError(f"pipeline: {b} sequences per rank cannot be cut into parallel.micro_batches={self.m}")
        rows = b // self.m
        zeros = ops.zeros((2, rows, t, self.hidden), ms.float32)
        saved = []
        for k in range(self.m):  # forwards
            mb = ids[k * rows:(k + 1) * rows]
            x, _ = self._forward(mb, zeros)
            saved.append((mb, x))
        scale = ms.Tensor(1.0 / self.m, ms.float32)
        aux = ops.zeros((3,), ms.float32)
        for mb, x in reversed(saved):  # backwards
            aux = aux + self._backward(mb, x, zeros[0], scale) / self.m
        aux = self._over_stages(aux)
        return self.piece.loss.total(aux[0], aux[1], aux[2]), aux
