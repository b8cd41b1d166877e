"""The model description shared by every supported architecture, read from HF ``config.json`` or GGUF metadata.

One decoder covers Qwen3, Qwen3-MoE, Qwen2/2.5 and Llama-shaped models; these flags are what differs.
"""
from dataclasses import asdict, dataclass, field
from typing import Optional

from mindedit.errors import MindeditError

SUPPORTED = ("qwen3", "qwen3_moe", "qwen2", "llama")


class ConfigError(MindeditError):
    """A model configuration that mindedit cannot build; the message names the source and the key."""


@dataclass
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    attention_bias: bool = False          # q/k/v bias (always on for Qwen2)
    qk_norm: bool = False                 # per-head RMSNorm on q and k before rotary (Qwen3)
    num_experts: int = 0                  # 0: dense MLP everywhere
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: list = field(default_factory=list)
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[object] = None  # int or list of ints, as in HF
    attention_target: Optional[dict] = None  # a converted model: its resolved MLA / GateSWA target

    def is_moe_layer(self, i: int) -> bool:
        return (self.num_experts > 0 and i not in self.mlp_only_layers
                and (i + 1) % self.decoder_sparse_step == 0)

    @property
    def eos_ids(self) -> list:
        e = self.eos_token_id
        return [] if e is None else ([e] if isinstance(e, int) else list(e))

    def to_hf_dict(self) -> dict:
        """The source architecture's own HF config.json body (without the conversion: mindedit.io.export adds
        the format a converted model is exported in)."""
        arch = {"qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM", "qwen2": "Qwen2ForCausalLM",
                "llama": "LlamaForCausalLM"}[self.model_type]
        d = {k: v for k, v in asdict(self).items() if k not in ("qk_norm", "attention_target")}
        d["architectures"] = [arch]
        d["hidden_act"] = "silu"
        if self.num_experts == 0:
            for k in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob",
                      "decoder_sparse_step", "mlp_only_layers"):
                d.pop(k)
        return d

    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config.json") -> "ModelConfig":
        def need(key):
            if key not in d:
                raise ConfigError(f"{source}: missing key {key!r}")
            return d[key]

        if "mindedit" in d:  # a mindedit export: its own description is authoritative, whatever format is on top
            try:
                cfg = cls(**d["mindedit"])
            except TypeError as e:
                raise ConfigError(f"{source}: key 'mindedit': {e}") from None
            cfg.validate(source)
            return cfg

        model_type = need("model_type")
        if model_type not in SUPPORTED:
            raise ConfigError(f"{source}: model_type {model_type!r} is not supported; expected one of {SUPPORTED}")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"{source}: hidden_act {act!r} is not supported; expected 'silu'")
        if d.get("use_sliding_window"):
            raise ConfigError(f"{source}: use_sliding_window=true is not supported for the teacher")
        if d.get("mlp_bias"):
            raise ConfigError(f"{source}: mlp_bias=true is not supported")
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ConfigError(f"{source}: rope type {rope_type!r} is not supported; expected 'default'")
        theta = d.get("rope_theta", rope.get("rope_theta", 10000.0))
        heads = need("num_attention_heads")
        hidden = need("hidden_size")
        moe = model_type == "qwen3_moe"
        cfg = cls(
            model_type=model_type,
            vocab_size=need("vocab_size"),
            hidden_size=hidden,
            intermediate_size=need("intermediate_size"),
            num_hidden_layers=need("num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or hidden // heads,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            max_position_embeddings=d.get("max_position_embeddings", 32768),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=True if model_type == "qwen2" else bool(d.get("attention_bias", False)),
            qk_norm=model_type in ("qwen3", "qwen3_moe"),
            num_experts=(d.get("num_experts") or d.get("num_local_experts") or 0) if moe else 0,
            num_experts_per_tok=d.get("num_experts_per_tok", 0) if moe else 0,
            moe_intermediate_size=d.get("moe_intermediate_size", 0) if moe else 0,
            norm_topk_prob=bool(d.get("norm_topk_prob", False)),
            decoder_sparse_step=d.get("decoder_sparse_step", 1) or 1,
            mlp_only_layers=list(d.get("mlp_only_layers") or []),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            attention_target=d.get("attention_target"),
        )
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config"):
        if self.model_type not in SUPPORTED:
            raise ConfigError(f"{source}: model_type {self.model_type!r} is not supported; expected one of {SUPPORTED}")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim"):
            v = getattr(self, key)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{source}: {key}={v!r}: expected a positive integer")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"{source}: num_attention_heads={self.num_attention_heads} is not a multiple of "
                              f"num_key_value_heads={self.num_key_value_heads}")
        if self.attention_target is not None and self.attention_target.get("kind") not in ("mla", "gateswa"):
            raise ConfigError(f"{source}: attention_target.kind={self.attention_target.get('kind')!r}: expected "
                              f"'mla' or 'gateswa'")
        if self.head_dim % 2:
            raise ConfigError(f"{source}: head_dim={self.head_dim}: rotary embedding needs an even head_dim")
        if self.num_experts:
            if not 0 < self.num_experts_per_tok <= self.num_experts:
                raise ConfigError(f"{source}: num_experts_per_tok={self.num_experts_per_tok}: expected 1.."
                                  f"{self.num_experts}")
            if self.moe_intermediate_size <= 0:
                raise ConfigError(f"{source}: moe_intermediate_size={self.moe_intermediate_size}: expected > 0")
