"""Attention in plain MindSpore ops: the oracle for every fused kernel in this package.

Materialises the full [B, H, Tq, Tk] score tensor, so use it for tests and short sequences only.
The contract (shapes, masking, sink logit) is documented in ``ascend_ops/__init__.py``. Written with
MindSpore ops only, so it runs in PyNative and graph mode alike.
"""
import mindspore as ms
from mindspore import mint, ops


def visibility_mask(tq: int, tk: int, window: int = 0, sink_tokens: int = 0, kv_len=None):
    """[tq, tk] bool: may query row i (absolute position kv_len - tq + i) see key j?
    ``kv_len`` (int32 tensor [1], default tk) is how many stored keys are valid."""
    n = tk if kv_len is None else kv_len.astype(ms.int64)
    pos = (ops.arange(0, tq) + (n - tq)).reshape(tq, 1)
    key = ops.arange(0, tk).reshape(1, tk)
    seen = key <= pos
    if window > 0:
        seen = mint.logical_and(seen, mint.logical_or(pos - key < window, key < sink_tokens))
    return seen


def attention_reference(q, k, v, sink=None, scale: float = 1.0, window: int = 0, sink_tokens: int = 0, kv_len=None):
    """Returns (o [B, H, Tq, Dv], lse [B, H, Tq])."""
    b, h, tq, d = q.shape
    hk, tk, dv = k.shape[1], k.shape[2], v.shape[3]
    group = h // hk
    if group > 1:
        k = k.unsqueeze(2).broadcast_to((b, hk, group, tk, d)).reshape(b, h, tk, d)
        v = v.unsqueeze(2).broadcast_to((b, hk, group, tk, dv)).reshape(b, h, tk, dv)
    scores = mint.matmul(q, mint.transpose(k, 2, 3)) * scale
    mask = visibility_mask(tq, tk, window, sink_tokens, kv_len)
    scores = mint.where(mask, scores, ms.Tensor(float("-inf"), ms.float32))
    if sink is not None:
        col = sink.reshape(1, h, 1, 1).broadcast_to((b, h, tq, 1))
        scores = mint.cat([scores, col], dim=-1)
    lse = ops.logsumexp(scores, -1)
    probs = mint.exp(scores - lse.unsqueeze(-1))
    if sink is not None:
        probs = probs[..., :tk]
    return mint.matmul(probs, v), lse


def rotate_half(x, cos, sin):
    """x [B, H, T, R] rotated by position (HF rotate_half layout), cos/sin [T, R]."""
    half = x.shape[-1] // 2
    rotated = mint.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * mint.broadcast_to(cos.astype(x.dtype), x.shape) + rotated * mint.broadcast_to(sin.astype(x.dtype),
                                                                                           x.shape)


def heads_reference(x, cos=None, sin=None):
    """x [B, T, H, D] -> [B, H, T, D], the last R channels of each head rotated (cos/sin [T, R], none: R = 0)."""
    y = mint.permute(x, (0, 2, 1, 3))
    if cos is None:
        return y
    keep = y.shape[-1] - cos.shape[-1]
    if keep == 0:
        return rotate_half(y, cos, sin)
    return mint.cat([y[..., :keep], rotate_half(y[..., keep:], cos, sin)], dim=-1)


def cache_write_reference(buf, new, pos):
    """Writes new [B, H, T, D] into buf [B, H, C, D] at slots pos..pos+T-1 (pos: int32 [1]), in place; returns the
    written buffer (read it through this value: the dependency orders the read after the write). ScatterNdUpdate:
    on the CPU backend it copies the whole buffer per call."""
    b, h, t, _ = new.shape
    shape = (b, h, t)
    slot = ops.arange(0, t).astype(ms.int32) + pos
    index = ops.stack([mint.broadcast_to(ops.arange(0, b).astype(ms.int32).reshape(b, 1, 1), shape),
                        mint.broadcast_to(ops.arange(0, h).astype(ms.int32).reshape(1, h, 1), shape),
                        mint.broadcast_to(slot.reshape(1, 1, t), shape)], -1)
    return ops.scatter_nd_update(buf, index, new)


def absorb_query_reference(q, w, nope: int, v: int):
    """q [B, H, T, nope + rope] -> [B, H, T, rank + rope]: the key part folded into the queries (q_nope W_uk per
    head), the rotary channels passed through."""
    w_uk = w.reshape(-1, nope + v, w.shape[1])[:, :nope]
    return mint.cat([mint.matmul(q[..., :nope], w_uk.unsqueeze(0)), q[..., nope:]], dim=-1)


def absorb_output_reference(o, w, nope: int, v: int):
    """o [B, H, T, rank] -> [B, H, T, v]: the value part applied to the latent output (o W_uv^T per head).
    ops.transpose, not mint.transpose: the latter is a view op with a memory side effect, after which MindSpore loads
    every later-read Parameter again and copies any loaded twice (a tied embedding: 113 MB per SmolLM2 step)."""
    w_uv = w.reshape(-1, nope + v, w.shape[1])[:, nope:]
    return mint.matmul(o, ops.transpose(w_uv, (0, 2, 1)).unsqueeze(0))
