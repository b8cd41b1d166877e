"""Building blocks shared by the decoder and every attention variant (RMSNorm, embedding, rotary position)."""
import numpy as np
import mindspore as ms
from mindspore import Parameter, mint, nn, ops

from ascend_ops import RMSNormOp


class RMSNorm(nn.Cell):
    """y = x / rms(x) * weight, computed in float32 like the reference: the CPU kernel (ascend_ops.RMSNormOp) for
    float32 on the CPU face, plain ops otherwise (MindSpore has no RMSNorm cell on CPU)."""

    def __init__(self, dim: int, eps: float = 1e-6, dtype=ms.float32):
        super().__init__()
        self.weight = Parameter(ms.Tensor(np.ones(dim), dtype), name="weight")
        self.eps = eps
        self.fused = RMSNormOp.for_face(eps) if dtype == ms.float32 else None
        self.frozen = False  # set by CausalLM.freeze (graph mode cannot read weight.requires_grad)

    def construct(self, x):
        if self.fused is not None and x.dtype == ms.float32:
            return self.fused(x, self.weight)
        dtype = x.dtype
        x = x.astype(ms.float32)
        x = x * expand(mint.rsqrt((x * x).sum(-1, keepdims=True) / x.shape[-1] + self.eps), x)  # (mint.mean's backward
        # keeps buffers a CPU graph never reuses; the sum's does not)
        x = x.astype(dtype)
        if self.frozen:  # (the teacher's) expanded: the same values, and the graph reuses the product's buffer
            return expand(self.weight, x) * x
        return self.weight * x  # a trained weight stays implicitly broadcast: the backward of an expanded one (a
        # reduction to [dim]) moved near-zero gradients enough to fail the pipeline test (docs/environment.md)


class Embedding(nn.Cell):
    """Token embedding as a gather on a ``weight`` Parameter (HF name; mint.nn.Embedding has no CPU kernel)."""

    def __init__(self, num: int, dim: int, dtype=ms.float32):
        super().__init__()
        self.weight = Parameter(ms.Tensor(np.zeros((num, dim)), dtype), name="weight")

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)


class Linear(nn.Cell):
    """HF-named linear layer (``weight`` [out, in], optional ``bias``), zero-initialised: weights come from a
    checkpoint or an init. One 2-D MatMul with ``transpose_b``: its backward is two more MatMuls, where
    mint.nn.Linear's (and mint.matmul's) backward transposes tensors, and a CPU graph never reuses a transpose's
    buffers (docs/environment.md)."""

    def __init__(self, n_in: int, n_out: int, bias: bool = False, dtype=ms.float32):
        super().__init__()
        self.weight = Parameter(mint.zeros((n_out, n_in), dtype=dtype), name="weight")
        self.bias = Parameter(mint.zeros((n_out,), dtype=dtype), name="bias") if bias else None
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        return self.output(self.matmul(x.reshape(-1, x.shape[-1]), self.weight), x.shape)

    def output(self, y, shape):
        """y [N, out] of the 2-D matmul -> plus the bias, shaped shape[:-1] + (out,)."""
        if self.bias is not None:
            y = ops.bias_add(y, self.bias)
        return y.reshape(shape[:-1] + (-1,))


def linear(n_in: int, n_out: int, bias: bool = False, dtype=ms.float32) -> Linear:
    return Linear(n_in, n_out, bias, dtype)


class Rotary(nn.Cell):
    """Rotary position embedding in the HF ``rotate_half`` layout (first half / second half of each head)."""

    def __init__(self, dim: int, theta: float):
        super().__init__()
        self.inv_freq = standard_inv_freq(dim, theta)

    def cos_sin(self, start, length: int):
        return rotary_cos_sin(self.inv_freq, start, length)


def standard_inv_freq(dim: int, theta: float):
    """The rotary frequencies theta^(-2i/dim), i < dim/2, as HF computes them (float64, then float32)."""
    return ms.Tensor((1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))).astype(np.float32))


def rotary_cos_sin(inv_freq, start, length: int):
    """[length, 2 * len(inv_freq)] cos and sin for positions start.. (start: an int or an int tensor [1])."""
    pos = ops.arange(0, length).astype(ms.float32) + start
    freqs = pos.unsqueeze(1) * inv_freq.unsqueeze(0)
    emb = mint.cat([freqs, freqs], dim=-1)
    return mint.cos(emb), mint.sin(emb)


def expand(a, like):
    """``a`` broadcast to ``like``'s shape as its own tensor, for a binary op with ``like``: an op that broadcasts
    implicitly keeps buffers that MindSpore's CPU graphs never reuse, ~4x its output per call (docs/environment.md);
    same-shape operands do not."""
    return mint.broadcast_to(a, like.shape)
