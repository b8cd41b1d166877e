"""Gated sliding-window attention (the S layers of a GateSWA model; F layers keep full attention).

Same projections and norms as the source GQA attention (copied at conversion), plus:
- a sliding window of ``window`` tokens, with ``sink_tokens`` first positions always in view (StreamingLLM);
- an optional learnable per-head sink logit (``sinks``, an extra softmax column with no value; MiMo-style),
  initialised at -20: exp(-20) ~ 2e-9 is below float32 resolution next to the row's own mass, so the student
  starts equal to the teacher, and Adam's normalised steps still move it;
- an output gate before ``o_proj``: ``2 * sigmoid(gate_proj(x))`` from the layer input, element-wise
  (one per head dim) or head-wise. Zero-initialised it is exactly 1 (sigmoid(0) = 1/2): the gate starts open.

Cache: a ring buffer of ``sink_tokens + window`` slots, bounded whatever the context length (or a full KV
cache when ``window == 0``, a gated full-attention layer).
"""

import numpy as np
import mindspore as ms
from mindspore import Parameter, mint, ops

from ascend_ops import FusedAttention
from mindedit.attention.gqa import GQAAttention
from mindedit.layers import expand, linear

SINK_LOGIT_INIT = -20.0


def ring_slot(pos, sink_tokens: int, window: int):
    """The ring slot (int32 [1]) of the token at position ``pos``: slots 0..sink_tokens-1 hold those positions
    forever; position p >= sink_tokens lands in slot sink_tokens + (p - sink_tokens) % window."""
    p = pos.astype(ms.int32)
    r = mint.clamp(p - sink_tokens, min=0)
    laps = ops.floor(r.astype(ms.float32) / window).astype(ms.int32)  # (no integer FloorDiv on CPU; exact < 2^24)
    return mint.where(p < sink_tokens, p, sink_tokens + r - window * laps)


def ring_sources(slots: int, sink_tokens: int, window: int, length: int):
    """For each of a ring's slots after positions 0..length-1 were written in order: the position it holds
    (the last one to land there) and whether any did (numpy)."""
    slot = np.arange(slots)
    r = slot - sink_tokens
    last = sink_tokens + r + window * (np.maximum(length - 1 - sink_tokens - r, 0) // window)
    src = np.where(slot < sink_tokens, slot, last)
    return np.minimum(src, length - 1).astype(np.int32), src < length


class GateSWAAttention(GQAAttention):
    # the source's plan, plus the output gate (by head: elementwise or head-wise rows) and the sink logit (a
    # parameter per head: "param:heads" slices it)
    TP_PLAN = dict(GQAAttention.TP_PLAN, gate_proj="colwise:heads", sinks="param:heads")

    def __init__(self, cfg, window: int, sink_tokens: int = 0, sink_logit: bool = False, gate: str = "elementwise",
                 dtype=ms.float32):
        """window 0 means full attention (a gated F layer); gate is 'elementwise', 'headwise' or 'none'."""
        super().__init__(cfg, dtype)
        self.window, self.sink_tokens, self.gate_kind = window, sink_tokens, gate
        self.attn = FusedAttention(self.head_dim ** -0.5, window, sink_tokens, use_sink=sink_logit)
        self.attn_ring = FusedAttention(self.head_dim ** -0.5, 0, 0, use_sink=sink_logit)  # decode over the ring
        self.use_sink = sink_logit
        if sink_logit:
            self.sinks = Parameter(ms.Tensor(np.full(self.num_heads, SINK_LOGIT_INIT, np.float32)), name="sinks")
        if gate != "none":
            width = self.num_heads * self.head_dim if gate == "elementwise" else self.num_heads
            self.gate_proj = linear(cfg.hidden_size, width, True, dtype)

    @property
    def capacity(self):
        return self.sink_tokens + self.window

    def cache_slots(self, capacity: int, full: bool = False) -> int:
        """A ring of exactly sink_tokens + window slots, or fewer when ``capacity`` is smaller (then positions never
        wrap); a full cache when asked (chunked prefill) or for a full-attention layer. construct() tells them
        apart by size: a ring has exactly sink_tokens + window slots, so a full cache of that capacity gets one
        spare slot."""
        if full or not self.window:
            return capacity + int(bool(self.window) and capacity == self.capacity)
        return min(self.capacity, capacity)

    def gated_output(self, x, o):
        """The output projection of o [B, H, T, D] times the gate computed from the layer input x [B, T, hidden]."""
        b, _, t, _ = o.shape
        o = self.heads.back(o)
        if self.gate_kind != "none":
            g = (2.0 * mint.sigmoid(self.gate_proj(x))).reshape(b, t, o.shape[2], -1).astype(o.dtype)
            o = o * (g if g.shape == o.shape else expand(g, o))  # (elementwise: the same shape)
        return self.o_proj(o.reshape(b, t, -1))

    def construct(self, x, cache=None, pos=None):
        """As GQAAttention. A ring cache takes one token per call (decode, at any position): prompts are prefilled
        through a full cache, which ``shrink_cache`` then turns into the ring."""
        sink = self.sinks if self.use_sink else None
        b, t, _ = x.shape
        if cache is None:
            q, k, v = self.project(x)
            return self.gated_output(x, self.attn(q, k, v, sink))
        q, k, v = self.project(x, pos)
        cap = cache[0].shape[2]
        if cap != self.capacity:
            # slots are positions (a full cache, or a ring too small to ever wrap): the kernel's window/sink mask
            # applies as without a cache, for any chunk at any position
            k_all, v_all = self.cache_write(cache[0], k, pos), self.cache_write(cache[1], v, pos)
            return self.gated_output(x, self.attn(q, k_all, v_all, sink, pos + t))
        if t != 1:
            raise ValueError("a ring cache takes one token per call: prefill through a full cache "
                             "(init_cache(..., full=True)), then shrink_cache")  # (graph mode: builtin errors only)
        slot = ring_slot(pos, self.sink_tokens, self.window)
        k_ring, v_ring = self.cache_write(cache[0], k, slot), self.cache_write(cache[1], v, slot)
        # every filled slot is in view of the newest token; slots fill in order until the ring wraps
        o = self.attn_ring(q, k_ring, v_ring, sink, mint.clamp(pos + 1, max=cap))
        return self.gated_output(x, o)

    def shrink_cache(self, cache, length: int):
        """The decode cache of a layer whose first ``length`` positions were prefilled into a full cache: the
        ring of its sink tokens and last window positions (or the full cache itself for a full-attention layer,
        or when the ring would not be smaller)."""
        slots = self.cache_slots(cache[0].shape[2])
        if slots == cache[0].shape[2] or not self.window:
            return cache
        src, valid = ring_sources(slots, self.sink_tokens, self.window, length)
        src, keep = ms.Tensor(src), ms.Tensor(valid.reshape(1, 1, -1, 1))
        return tuple(mint.where(keep, ops.gather(c, src, 2), ops.zeros((), c.dtype)) for c in cache)
