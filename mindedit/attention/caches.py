"""Inference caches. A cache is *functional state*: a tuple of fixed-capacity tensors that an attention module
takes and returns (``construct(x, cache, pos) -> (out, new_cache)``), so that prefill and every decode step run
as two compiled graphs with static shapes instead of slow PyNative ops (measured: a 576x576 PyNative matmul on
the CPU backend costs ~9 ms, a PyNative SmolLM2 decode step ~3 s).

``pos`` (int32 tensor [1]) is how many tokens the layer has already processed: the position of the first new
token. Each attention class makes its own cache (``init_cache``) and is the only reader of its layout.
"""
import mindspore as ms
from mindspore import mint, ops


def write_slots(buf, new, pos):
    """buf [B, H, C, D] with new [B, H, T, D] placed at slots pos..pos+T-1 (no scatter: a gather and a select,
    which every backend has and graph mode compiles once)."""
    c, t = buf.shape[2], new.shape[2]
    rel = ops.arange(0, c) - pos.astype(ms.int64)
    inside = mint.logical_and(rel >= 0, rel < t)
    spread = ops.gather(new, mint.clamp(rel, 0, t - 1), 2)
    return mint.where(inside.reshape(1, 1, c, 1), spread, buf)


def kv_cache(batch: int, kv_heads: int, capacity: int, k_dim: int, v_dim: int, dtype=ms.float32):
    """A full key/value cache: (k [B, Hk, C, Dk], v [B, Hk, C, Dv]), zero-filled."""
    return (ops.zeros((batch, kv_heads, capacity, k_dim), dtype), ops.zeros((batch, kv_heads, capacity, v_dim), dtype))


def cache_nbytes(caches) -> int:
    """Bytes held by (nested tuples of) cache tensors."""
    if isinstance(caches, (tuple, list)):
        return sum(cache_nbytes(c) for c in caches)
    return caches.nbytes
