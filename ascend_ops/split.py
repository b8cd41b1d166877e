"""Attention split into the parts a fused operator has, merged by their softmax statistics: how the 910B computes
what CANN's FlashAttentionScore has no single mode for (a sliding window plus sink tokens plus a sink logit).

    band     the causal attention, or its sliding band (keys p - window < j <= p): ONE call into the part face
             (a 910B: ascend_ops.ascend, FlashAttentionScore / FusedInferAttentionScore; the CPU twin: the CPU
             kernel), returning (o, lse)
    sinks    the first ``sink_tokens`` keys that the band leaves out (j < sink_tokens and p - j >= window): a
             [Tq, sink_tokens] piece in plain ops (tiny, on every device)
    logit    the learnable sink logit: one extra softmax column with no value
merged as o = sum_parts exp(lse_part - lse) o_part, lse = log sum_parts exp(lse_part).

Backward (``bprop``): the ring-attention identity. With the merged o and lse, each part's FlashAttention backward
(P = exp(S - lse), dS = P (dP - rowsum(dO o))) gives exactly that part's share of dq, dk, dv; so the band's
gradient is the part face's backward called with the merged statistics, the sinks' the same formula in plain ops,
and the logit's -sum_i exp(sink - lse_i) rowsum(dO o)_i. No gradient through a part's own statistics is needed,
which the fused operators do not offer.

The contract is ascend_ops.FusedAttention's. Rows of a part with no visible key (the sinks piece, once the window
covers them) carry a very negative finite lse (scores filled with -1e30), so their weight is exp(-huge) = 0 and
no NaN can appear, forward or backward.
"""
import mindspore as ms
from mindspore import mint, nn, ops

NEG = -1e30


def positions(tq: int, kv_len, tk: int):
    """Absolute positions [tq, 1] of the query rows (the last tq of the kv_len valid keys)."""
    n = ops.full((1,), tk, ms.int32) if kv_len is None else kv_len
    return (ops.arange(0, tq) + (n.astype(ms.int64) - tq)).reshape(tq, 1)


def expand_kv(x, heads: int):
    """[B, Hk, T, D] -> [B, H, T, D] (each KV head serves H // Hk query heads)."""
    b, hk, t, d = x.shape
    if hk == heads:
        return x
    return x.unsqueeze(2).broadcast_to((b, hk, heads // hk, t, d)).reshape(b, heads, t, d)


def fold_kv(g, kv_heads: int):
    """The adjoint of expand_kv: [B, H, T, D] -> [B, Hk, T, D] summed over each KV head's query heads."""
    b, h, t, d = g.shape
    if h == kv_heads:
        return g
    return g.reshape(b, kv_heads, h // kv_heads, t, d).sum(2)


def logaddexp(a, b):
    m = mint.maximum(a, b)
    return m + mint.log(mint.exp(a - m) + mint.exp(b - m))


class SplitAttention(nn.Cell):
    """(q, k, v, sink, kv_len) -> (o, lse), float32, as FusedAttention's contract. ``part`` is the face of the band:
    ``part.forward(q, k, v, kv_len) -> (o, lse)`` and ``part.backward(q, k, v, kv_len, o, lse, do) -> (dq, dk, dv)``
    over the causal or banded keys (its window is its own)."""

    def __init__(self, part, scale: float, window: int, sink_tokens: int, use_sink: bool):
        super().__init__()
        self.part, self.scale = part, float(scale)
        self.window, self.sinks = int(window), int(sink_tokens) if window else 0
        self.use_sink = bool(use_sink)

    def sink_scores(self, q, k, kv_len):
        """Scores [B, H, Tq, S] of the sink keys the band leaves out, others at -1e30."""
        s, tq = self.sinks, q.shape[2]
        ks = expand_kv(k[:, :, :s], q.shape[1])
        scores = mint.matmul(q, mint.transpose(ks, 2, 3)) * self.scale
        p = positions(tq, kv_len, k.shape[2])
        j = ops.arange(0, s).reshape(1, s)
        seen = mint.logical_and(j <= p, p - j >= self.window)
        return mint.where(seen, scores, ms.Tensor(NEG, ms.float32))

    def construct(self, q, k, v, sink, kv_len):
        o, lse = self.part.forward(q, k, v, kv_len)
        if self.sinks:
            scores = self.sink_scores(q, k, kv_len)
            lse_s = ops.logsumexp(scores, -1)
            o_s = mint.matmul(mint.exp(scores - lse_s.unsqueeze(-1)), expand_kv(v[:, :, :self.sinks], q.shape[1]))
            merged = logaddexp(lse, lse_s)
            o = o * mint.exp(lse - merged).unsqueeze(-1) + o_s * mint.exp(lse_s - merged).unsqueeze(-1)
            lse = merged
        if self.use_sink:
            merged = logaddexp(lse, sink.reshape(1, -1, 1))
            o = o * mint.exp(lse - merged).unsqueeze(-1)
            lse = merged
        return o, lse

    def bprop(self, q, k, v, sink, kv_len, out, dout):
        o, lse = out
        do = dout[0]
        dq, dk, dv = self.part.backward(q, k, v, kv_len, o, lse, do)
        delta = (do * o).sum(-1)                                        # [B, H, Tq]
        if self.sinks:
            s, hk = self.sinks, k.shape[1]
            p = mint.exp(self.sink_scores(q, k, kv_len) - lse.unsqueeze(-1))         # [B, H, Tq, S]
            vs, ks = expand_kv(v[:, :, :s], q.shape[1]), expand_kv(k[:, :, :s], q.shape[1])
            ds = p * (mint.matmul(do, mint.transpose(vs, 2, 3)) - delta.unsqueeze(-1))
            dq = dq + mint.matmul(ds, ks) * self.scale
            pad = ops.zeros((k.shape[0], hk, k.shape[2] - s, k.shape[3]), ms.float32)
            dk = dk + mint.cat([fold_kv(mint.matmul(mint.transpose(ds, 2, 3), q) * self.scale, hk), pad], dim=2)
            pad_v = ops.zeros((v.shape[0], hk, v.shape[2] - s, v.shape[3]), ms.float32)
            dv = dv + mint.cat([fold_kv(mint.matmul(mint.transpose(p, 2, 3), do), hk), pad_v], dim=2)
        if self.use_sink:
            dsink = -(mint.exp(sink.reshape(1, -1, 1) - lse) * delta).sum((0, 2))
        else:
            dsink = ops.zeros_like(sink)
        return dq, dk, dv, dsink, ops.zeros_like(kv_len)


class CPUBand(nn.Cell):
    """The CPU twin of the band part: the CPU kernel with the window alone (no sinks, no logit); its backward is
    the kernel's, fed the merged statistics."""

    def __init__(self, scale: float, window: int):
        super().__init__()
        from .cpu_kernel import flash_attention_op, flash_attention_backward_op, kernel_constants
        self.op, self.backward_op = flash_attention_op(), flash_attention_backward_op()
        self.meta, self.scale_t = kernel_constants(scale, window, 0, False)

    def forward(self, q, k, v, kv_len):
        return self.op(q, k, v, ops.zeros((q.shape[1],), ms.float32), self.meta, self.scale_t, kv_len)

    def backward(self, q, k, v, kv_len, o, lse, do):
        dq, dk, dv, _ = self.backward_op(q, k, v, ops.zeros((q.shape[1],), ms.float32), self.meta, self.scale_t,
                                         kv_len, o, lse, do)
        return dq, dk, dv
