"""Inference caches. A cache is a tuple of fixed-capacity tensors that its attention module writes into *in
place* (``construct(x, cache, pos) -> out``): prefill chunks and every decode step run as compiled graphs with
static shapes, the caches passed in as ``ms.mutable`` inputs and updated where they lie, so a step writes the new
tokens' slots and nothing else (``ascend_ops.CacheWrite``; measured on SmolLM2 at a 2K context: a functional
cache, a select over every layer's whole buffers per token, cost 26 ms of a 284 ms decode step; ScatterNdUpdate,
which copies each buffer per call, ~17 ms of a 115 ms step; the C++ write of the new slots ~0. A 576x576 PyNative
matmul on the CPU backend costs ~9 ms, a PyNative decode step ~3 s).

``pos`` (int32 tensor [1]) is how many tokens the layer has already processed: the position of the first new
token. Each attention class makes its own cache (``init_cache``) and is the only reader of its layout; slots past
the tokens written so far may hold anything (a padded chunk's tail, an earlier generation's tokens): readers
mask them by position.
"""
import mindspore as ms
from mindspore import ops


def kv_cache(batch: int, kv_heads: int, capacity: int, k_dim: int, v_dim: int, dtype=ms.float32):
    """A full key/value cache: (k [B, Hk, C, Dk], v [B, Hk, C, Dv]), zero-filled."""
    return (ops.zeros((batch, kv_heads, capacity, k_dim), dtype), ops.zeros((batch, kv_heads, capacity, v_dim), dtype))


def cache_nbytes(caches) -> int:
    """Bytes held by (nested tuples of) cache tensors."""
    if isinstance(caches, (tuple, list)):
        return sum(cache_nbytes(c) for c in caches)
    return caches.nbytes
