"""The source attention of Qwen3-family models: grouped-query attention with optional per-head q/k RMSNorm
(Qwen3), optional q/k/v bias (Qwen2) and rotary positions. Parameter names follow HF (q_proj, ..., q_norm)."""
from mindspore import nn

from ascend_ops import CacheWrite, FusedAttention, Heads
from mindedit.attention.caches import kv_cache
from mindedit.layers import RMSNorm, Rotary, linear


class GQAAttention(nn.Cell):
    # How tensor parallelism shards this module (mindedit.parallel.parallelize reads it; nothing here depends on
    # it): submodule -> style:unit. Styles: colwise (output rows split, the input enters through f), rowwise (input
    # columns split, the output summed over the group), replicated (whole on every rank, its gradient partial:
    # summed over the group). Units: heads, kv_heads (replicated over tp // kv_heads ranks when tp > kv_heads).
    TP_PLAN = {"q_proj": "colwise:heads", "k_proj": "colwise:kv_heads", "v_proj": "colwise:kv_heads",
               "o_proj": "rowwise:heads", "q_norm": "replicated", "k_norm": "replicated"}

    def __init__(self, cfg, dtype):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.dtype = dtype
        h, d = cfg.hidden_size, cfg.head_dim
        self.q_proj = linear(h, self.num_heads * d, cfg.attention_bias, dtype)
        self.k_proj = linear(h, self.num_kv_heads * d, cfg.attention_bias, dtype)
        self.v_proj = linear(h, self.num_kv_heads * d, cfg.attention_bias, dtype)
        self.o_proj = linear(self.num_heads * d, h, False, dtype)
        self.qk_norm = cfg.qk_norm
        if self.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps, dtype)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps, dtype)
        self.rotary = Rotary(d, cfg.rope_theta)
        self.heads = Heads(rotary=d)
        self.attn = FusedAttention(d ** -0.5)
        self.cache_write = CacheWrite()

    def cache_slots(self, capacity: int, full: bool = False) -> int:
        """Token slots of this layer's cache for a context of ``capacity`` tokens."""
        return capacity

    def cache_values(self, context: int) -> int:
        """Values (not bytes) the cache holds at ``context`` tokens: what the KV report counts."""
        return self.cache_slots(context) * 2 * self.num_kv_heads * self.head_dim

    def init_cache(self, batch: int, capacity: int, full: bool = False):
        return kv_cache(batch, self.num_kv_heads, self.cache_slots(capacity, full), self.head_dim, self.head_dim,
                        self.dtype)

    def shrink_cache(self, cache, length: int):
        """The cache to decode from after ``length`` positions were prefilled into a full one (init_cache(...,
        full=True)): the same one here; a bounded layer (a sliding window) returns its smaller cache."""
        return cache

    def project(self, x, start=0):
        """Queries, keys and values [B, heads, T, head_dim] with norms and rotary applied (positions from start)."""
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, -1, self.head_dim)  # -1 heads: a tensor-parallel rank holds some of them
        k = self.k_proj(x).reshape(b, t, -1, self.head_dim)
        v = self.v_proj(x).reshape(b, t, -1, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = self.rotary.cos_sin(start, t)
        return self.heads.front(q, cos, sin), self.heads.front(k, cos, sin), self.heads.front(v)

    def merge_heads(self, o):
        b, _, t, _ = o.shape
        return self.o_proj(self.heads.back(o).reshape(b, t, -1))

    def construct(self, x, cache=None, pos=None):
        """out; with a cache (from ``init_cache``) and ``pos``, the new tokens' keys and values are written into it
        first and attention reads everything up to them."""
        if cache is None:
            q, k, v = self.project(x)
            return self.merge_heads(self.attn(q, k, v))
        q, k, v = self.project(x, pos)
        k_all, v_all = self.cache_write(cache[0], k, pos), self.cache_write(cache[1], v, pos)
        return self.merge_heads(self.attn(q, k_all, v_all, None, pos + x.shape[1]))
