"""A mindedit-converted model for HF transformers: ``AutoModelForCausalLM.from_pretrained(export,
trust_remote_code=True)``. mindedit writes this file next to the weights of every export that no native
transformers architecture can express (GateSWA with an output gate, sink tokens or a sink logit; MLA with chosen
rotary frequencies or a per-head query norm; MLA of a Qwen3-MoE source).

The decoder is the source's (Llama / Qwen2 / Qwen3 / Qwen3-MoE layout, HF parameter names, transformers'
RMSNorm and activations); each layer's attention is described by ``config.attention_target``:
- GateSWA: causal attention where a sliding layer's query sees the last ``window`` keys and the first
  ``sink_tokens`` ones, an optional per-head sink logit (an extra softmax column without a value), and an output
  gate ``2 sigmoid(gate_proj(x))`` (per element or per head) before o_proj; full layers plain or gated.
- MLA: DeepSeek-V2/V3's layout (q_proj or q_a/q_b, kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj), one shared
  rotary key whose frequencies are ``rotary_inv_freq`` (saved with the weights) or the standard ones of
  ``attention_target.rope_theta``; optional per-head query norm.
Attention is computed eagerly over transformers' DynamicCache (full keys and values, or MLA's latent): results
equal mindedit's; the bounded ring caches that make GateSWA cheap at long context are mindedit's own decoder's.
"""
import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaRMSNorm, rotate_half

from .configuration_mindedit import MindeditConfig

LATENT_NORM_EPS = 1e-6  # MLA's latent norms (as DeepSeek-V3)


def standard_inv_freq(dim, theta, device):
    return (1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)).float()


def rotate(x, inv_freq, positions):
    """x [B, H, T, D] rotated at positions [B, T] (rotate_half layout, D = 2 x len(inv_freq))."""
    freqs = positions[:, None, :, None].float() * inv_freq.float()
    emb = torch.cat([freqs, freqs], dim=-1)
    return x * emb.cos().to(x.dtype) + rotate_half(x) * emb.sin().to(x.dtype)


def attend(q, k, v, slots, key_mask, scale, window=0, sink_tokens=0, sink=None):
    """q [B, H, T, D]; k, v [B, Hk, S, D] with key j in cache slot j; slots [T]: the query's own slot.
    A query sees keys up to its own slot, within ``window`` of it or among the first ``sink_tokens`` (window > 0);
    key_mask [B, S] (False: padding) or None; ``sink`` [H]: an extra logit column without a value."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    key = torch.arange(k.shape[2], device=q.device)
    slot = slots[:, None]
    seen = key <= slot
    if window:
        seen = seen & ((slot - key < window) | (key < sink_tokens))
    seen = seen[None, None]
    if key_mask is not None:
        seen = seen & key_mask[:, None, None, :].bool()
    scores = scores.masked_fill(~seen, float("-inf"))
    if sink is not None:
        scores = torch.cat([scores, sink.float().view(1, -1, 1, 1).expand(*scores.shape[:3], 1)], dim=-1)
    probs = scores.softmax(-1)[..., :k.shape[2]]
    return torch.matmul(probs, v.float()).to(q.dtype)


class GatedWindowAttention(nn.Module):
    """The source's attention (q/k/v/o, Qwen3's q/k norms, Qwen2's bias) with GateSWA's window, sinks and gate."""

    def __init__(self, config, layer):
        super().__init__()
        t = config.attention_target or {}
        sliding = t.get("kind") == "gateswa" and t["layer_types"][layer] == "sliding"
        gate = t.get("gate", "none") if sliding or t.get("gate_full_layers") else "none"
        h, d, hk = config.num_attention_heads, config.head_dim, config.num_key_value_heads
        self.num_heads, self.head_dim, self.theta = h, d, config.rope_theta
        self.window = t["window"] if sliding else 0
        self.sink_tokens = t["sink_tokens"] if sliding else 0
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, h * d, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, hk * d, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, hk * d, bias=bias)
        self.o_proj = nn.Linear(h * d, config.hidden_size, bias=False)
        self.qk_norm = config.qk_norm
        if self.qk_norm:
            self.q_norm = LlamaRMSNorm(d, eps=config.rms_norm_eps)
            self.k_norm = LlamaRMSNorm(d, eps=config.rms_norm_eps)
        self.sinks = nn.Parameter(torch.zeros(h)) if sliding and t["sink_logit"] else None
        self.gate = gate
        if gate != "none":
            self.gate_proj = nn.Linear(config.hidden_size, h * d if gate == "elementwise" else h, bias=True)

    def forward(self, x, positions, slots, key_mask, cache, layer_idx):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, -1, self.head_dim)
        k = self.k_proj(x).view(b, t, -1, self.head_dim)
        v = self.v_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        inv_freq = standard_inv_freq(self.head_dim, self.theta, x.device)
        q, k = rotate(q.transpose(1, 2), inv_freq, positions), rotate(k.transpose(1, 2), inv_freq, positions)
        if cache is not None:
            k, v = cache.update(k, v, layer_idx)
        o = attend(q, k, v, slots, key_mask, self.head_dim ** -0.5, self.window, self.sink_tokens, self.sinks)
        if self.gate != "none":
            g = 2.0 * torch.sigmoid(self.gate_proj(x)).view(b, t, self.num_heads, -1).transpose(1, 2)
            o = o * g
        return self.o_proj(o.transpose(1, 2).reshape(b, t, -1))


class LatentAttention(nn.Module):
    """MLA in the DeepSeek-V2/V3 layout, naive form (keys and values expanded per head from the cached latent)."""

    def __init__(self, config, layer):
        super().__init__()
        t = config.attention_target
        h, hidden = config.num_attention_heads, config.hidden_size
        self.num_heads = h
        self.nope, self.rope, self.v_dim = t["qk_nope_head_dim"], t["qk_rope_head_dim"], t["v_head_dim"]
        self.rank, self.q_rank = t["kv_lora_rank"], t["q_lora_rank"]
        qk, bias = self.nope + self.rope, config.attention_bias
        if self.q_rank:
            self.q_a_proj = nn.Linear(hidden, self.q_rank, bias=bias)
            self.q_a_layernorm = LlamaRMSNorm(self.q_rank, eps=LATENT_NORM_EPS)
            self.q_b_proj = nn.Linear(self.q_rank, h * qk, bias=False)
        else:  # (an export_compatible student drops the query bias, as DeepSeek-V3's q_proj has none)
            self.q_proj = nn.Linear(hidden, h * qk, bias=bias and not t.get("export_compatible"))
        self.q_norm = LlamaRMSNorm(qk, eps=config.rms_norm_eps) if t["q_norm"] else None
        self.kv_a_proj_with_mqa = nn.Linear(hidden, self.rank + self.rope, bias=bias)
        self.kv_a_layernorm = LlamaRMSNorm(self.rank, eps=LATENT_NORM_EPS) if t["latent_norm"] else None
        self.kv_b_proj = nn.Linear(self.rank, h * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(h * self.v_dim, hidden, bias=bias)
        self.theta = t.get("rope_theta")
        if not self.theta:  # frequencies chosen by the conversion: saved with the weights
            self.register_buffer("rotary_inv_freq", torch.zeros(self.rope // 2), persistent=True)

    def forward(self, x, positions, slots, key_mask, cache, layer_idx):
        b, t, _ = x.shape
        inv_freq = standard_inv_freq(self.rope, self.theta, x.device) if self.theta else self.rotary_inv_freq
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if self.q_rank else self.q_proj(x)
        q = q.view(b, t, self.num_heads, self.nope + self.rope)
        if self.q_norm is not None:
            q = self.q_norm(q)
        q = q.transpose(1, 2)
        q = torch.cat([q[..., :self.nope], rotate(q[..., self.nope:], inv_freq, positions)], dim=-1)
        c, k_pe = torch.split(self.kv_a_proj_with_mqa(x), [self.rank, self.rope], dim=-1)
        if self.kv_a_layernorm is not None:
            c = self.kv_a_layernorm(c)
        c = c.view(b, 1, t, self.rank)
        k_pe = rotate(k_pe.view(b, 1, t, self.rope), inv_freq, positions)
        if cache is not None:
            c, k_pe = cache.update(c, k_pe, layer_idx)
        s = c.shape[2]
        kv = self.kv_b_proj(c.view(b, s, self.rank)).view(b, s, self.num_heads, -1).transpose(1, 2)
        k = torch.cat([kv[..., :self.nope], k_pe.expand(b, self.num_heads, s, self.rope)], dim=-1)
        o = attend(q, k, kv[..., self.nope:], slots, key_mask, (self.nope + self.rope) ** -0.5)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, config, intermediate):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, intermediate, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, config.hidden_size, bias=False)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class SparseMoE(nn.Module):
    """Qwen3-MoE's block: softmax router, top-k experts per token, optional renormalisation of the k weights."""

    def __init__(self, config):
        super().__init__()
        self.top_k, self.norm_topk_prob = config.num_experts_per_tok, config.norm_topk_prob
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList([MLP(config, config.moe_intermediate_size) for _ in range(config.num_experts)])

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        top, idx = torch.topk(F.softmax(self.gate(x).float(), dim=-1), self.top_k, dim=-1)
        if self.norm_topk_prob:
            top = top / top.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows, choice = torch.nonzero(idx == e, as_tuple=True)
            if len(rows):
                out.index_add_(0, rows, expert(x[rows]) * top[rows, choice, None].to(x.dtype))
        return out.reshape(shape)


class DecoderLayer(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        kind = (config.attention_target or {}).get("kind")
        self.self_attn = (LatentAttention if kind == "mla" else GatedWindowAttention)(config, layer)
        moe = (getattr(config, "num_experts", 0) and layer not in (config.mlp_only_layers or [])
               and (layer + 1) % config.decoder_sparse_step == 0)
        self.mlp = SparseMoE(config) if moe else MLP(config, config.intermediate_size)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.layer_idx = layer

    def forward(self, x, positions, slots, key_mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), positions, slots, key_mask, cache, self.layer_idx)
        return x + self.mlp(self.post_attention_layernorm(x))


class MindeditPreTrainedModel(PreTrainedModel):
    config_class = MindeditConfig
    base_model_prefix = "model"
    _no_split_modules = ["DecoderLayer"]

    def _init_weights(self, module):  # (a checkpoint supplies every weight; this only keeps new modules finite)
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)


class MindeditModel(MindeditPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False):
        b, t = input_ids.shape
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        slots = torch.arange(past, past + t, device=input_ids.device)
        positions = position_ids if position_ids is not None else slots[None].expand(b, t)
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, positions, slots, attention_mask, past_key_values)
        return self.norm(x), past_key_values


class MindeditForCausalLM(MindeditPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.model = MindeditModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                labels=None, **kwargs):
        hidden, cache = self.model(input_ids, attention_mask, position_ids, past_key_values, bool(use_cache))
        logits = self.lm_head(hidden).float()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache)
