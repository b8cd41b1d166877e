"""Multi-head latent attention in the DeepSeek-V2/V3 layout (parameter names as in HF DeepSeek-V3).

    q      = q_proj(x)                     or q_b_proj(q_a_layernorm(q_a_proj(x)))   [H, nope + rope]
    c, k_pe = split(kv_a_proj_with_mqa(x))  c: [kv_lora_rank], k_pe: [rope] shared by all heads
    c      = kv_a_layernorm(c)
    k_nope, v = split(kv_b_proj(c))         per head [nope], [v]

Two forward modes that must agree:
- *naive* (training, prefill without cache): expand keys and values per head, one attention over H heads.
- *absorbed* (decode): fold kv_b_proj's key half into the query and its value half into the output, and attend
  directly over the cached latent: a single shared "key" [c; k_pe] and "value" c. The cache per token per layer
  holds kv_lora_rank + qk_rope_head_dim values.

Source models with per-head q/k RMSNorm (Qwen3): a per-head key norm cannot survive absorption (it is
nonlinear in each head's key, which no longer exists at decode), so it is dropped; the per-head query norm is
query-side and is kept (``q_norm``, over the whole nope+rope query head). Initialisation (mindedit/edit)
starts both close to the source; distillation learns the rest.

Rotary frequencies of the rope channels: the standard ones of ``target.rope_theta`` (an ``export_compatible``
student, as DeepSeek-V3 computes them), or else a buffer (``rotary_inv_freq``, saved with the weights), because
conversion from a GQA/MHA source may keep the most useful source frequencies, not a contiguous spectrum.
The latent norms use DeepSeek-V3's epsilon (1e-6) whatever the source's.
"""
import mindspore as ms
from mindspore import Parameter, mint, nn, ops

from ascend_ops import CacheWrite, FusedAttention, Heads, LatentAbsorb
from mindedit.layers import RMSNorm, linear, rotary_cos_sin, standard_inv_freq

LATENT_NORM_EPS = 1e-6  # DeepSeek-V3's kv_a_layernorm / q_a_layernorm


def has_query_bias(cfg, target) -> bool:
    """DeepSeek-V3's q_proj has no bias (its q_a_proj does): an export_compatible student of a source with q/k/v
    bias drops the query bias when it has a full-rank q_proj."""
    return cfg.attention_bias and (bool(target.q_lora_rank) or not target.export_compatible)


class MLAAttention(nn.Cell):
    # How tensor parallelism shards this module (styles as GQAAttention.TP_PLAN, plus "shared": a linear computed
    # whole on every rank from f(x), its gradient partial; and "colwise_local": rows split by head, fed by a
    # shared output, so no f). Heads split; the latent down-projections are shared.
    TP_PLAN = {"q_proj": "colwise:heads", "q_a_proj": "shared", "q_a_layernorm": "replicated",
               "q_b_proj": "colwise_local:heads", "q_norm": "replicated", "kv_a_proj_with_mqa": "shared",
               "kv_a_layernorm": "replicated", "kv_b_proj": "colwise_local:heads", "o_proj": "rowwise:heads"}

    def __init__(self, cfg, target, dtype=ms.float32):
        """cfg: the source ModelConfig (hidden size, heads, eps, rope theta); target: an MLAConfig."""
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.nope, self.rope, self.v_dim = target.qk_nope_head_dim, target.qk_rope_head_dim, target.v_head_dim
        self.rank, self.q_rank = target.kv_lora_rank, target.q_lora_rank
        self.dtype = dtype
        h, n, qk = cfg.hidden_size, self.num_heads, self.nope + self.rope
        bias = cfg.attention_bias
        if self.q_rank:
            self.q_a_proj = linear(h, self.q_rank, bias, dtype)
            self.q_a_layernorm = RMSNorm(self.q_rank, LATENT_NORM_EPS, dtype)
            self.q_b_proj = linear(self.q_rank, n * qk, False, dtype)
        else:
            self.q_proj = linear(h, n * qk, has_query_bias(cfg, target), dtype)
        self.use_q_norm = target.q_norm
        if self.use_q_norm:
            self.q_norm = RMSNorm(qk, cfg.rms_norm_eps, dtype)
        self.kv_a_proj_with_mqa = linear(h, self.rank + self.rope, bias, dtype)
        self.latent_norm = target.latent_norm
        if self.latent_norm:
            self.kv_a_layernorm = RMSNorm(self.rank, LATENT_NORM_EPS, dtype)
        self.kv_b_proj = linear(self.rank, n * (self.nope + self.v_dim), False, dtype)
        self.o_proj = linear(n * self.v_dim, h, bias, dtype)  # (DeepSeek-V3: attention_bias covers o_proj too)
        theta = getattr(target, "rope_theta", None)
        if theta:
            self.rotary_inv_freq = standard_inv_freq(self.rope, theta)
        else:
            self.rotary_inv_freq = Parameter(standard_inv_freq(self.rope, cfg.rope_theta), name="rotary_inv_freq",
                                             requires_grad=False)
        self.heads = Heads(rotary=self.rope)  # rotary on the last rope channels of query heads and the latent
        scale = qk ** -0.5
        self.attn = FusedAttention(scale)
        self.attn_latent = FusedAttention(scale, latent=self.rank)  # absorbed: values = the keys' latent channels
        self.absorb = LatentAbsorb(self.nope, self.v_dim)             # kv_b_proj folded in around it
        self.cache_write = CacheWrite()

    # -- pieces shared by both modes -------------------------------------------------------------------
    def cos_sin(self, start, length: int):
        return rotary_cos_sin(self.rotary_inv_freq, start, length)

    def queries(self, x, cos, sin):
        """q [B, H, T, nope + rope], rotary applied to each head's last rope channels."""
        b, t, _ = x.shape
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if self.q_rank else self.q_proj(x)
        q = q.reshape(b, t, -1, self.nope + self.rope)  # -1 heads: a tensor-parallel rank holds some of them
        if self.use_q_norm:
            q = self.q_norm(q)
        return self.heads.front(q, cos, sin)

    def latent(self, x, cos, sin):
        """c [B, 1, T, rank] (normed), k_pe [B, 1, T, rope] (rotary applied): what the cache holds."""
        b, t, _ = x.shape
        kv = self.heads.front(self.kv_a_proj_with_mqa(x).reshape(b, t, 1, -1), cos, sin)  # one head: [c; k_pe]
        c = kv[..., :self.rank]
        if self.latent_norm:
            c = self.kv_a_layernorm(c)
        return c, kv[..., self.rank:]

    def merge_heads(self, o):
        b, _, t, _ = o.shape
        return self.o_proj(self.heads.back(o).reshape(b, t, -1))

    # -- the two modes ---------------------------------------------------------------------------------
    def naive(self, q, c, k_pe, kv_len=None):
        b, _, t, _ = c.shape
        kv = self.heads.front(self.kv_b_proj(c.reshape(b, t, self.rank)).reshape(b, t, -1, self.nope + self.v_dim))
        k = mint.cat([kv[..., :self.nope], k_pe.broadcast_to((b, kv.shape[1], t, self.rope))], dim=-1)
        return self.attn(q, k, kv[..., self.nope:], None, kv_len)

    def absorbed(self, q, latent, kv_len=None):
        """q against latent [B, 1, S, rank + rope] ([c; k_pe], the cache's layout: one shared head, MQA): kv_b_proj's
        key half folded into the queries, its value half applied to the latent output."""
        w = self.kv_b_proj.weight
        o_lat = self.attn_latent(self.absorb.query(q, w), latent, None, None, kv_len)  # [B, H, T, rank]
        return self.absorb.output(o_lat, w)  # [B, H, T, v]

    def cache_values(self, context: int) -> int:
        """Values (not bytes) the latent cache holds at ``context`` tokens: what the KV report counts."""
        return context * (self.rank + self.rope)

    def init_cache(self, batch: int, capacity: int, full: bool = False):
        """The latent cache: [B, 1, C, kv_lora_rank + qk_rope_head_dim] (c and k_pe side by side)."""
        return (ops.zeros((batch, 1, capacity, self.rank + self.rope), self.dtype),)

    def construct(self, x, cache=None, pos=None, absorb=False):
        start = 0 if cache is None else pos
        cos, sin = self.cos_sin(start, x.shape[1])
        q = self.queries(x, cos, sin)
        c, k_pe = self.latent(x, cos, sin)
        if cache is None:
            return self.merge_heads(self.absorbed(q, mint.cat([c, k_pe], dim=-1)) if absorb else self.naive(q, c, k_pe))
        buf = self.cache_write(cache[0], mint.cat([c, k_pe], dim=-1), pos)  # (read as written: no re-concatenation)
        return self.merge_heads(self.absorbed(q, buf, pos + x.shape[1]))

    def shrink_cache(self, cache, length: int):
        """The latent cache is the same for prefill and decode."""
        return cache
