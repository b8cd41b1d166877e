"""Configuration of a mindedit-converted model for HF transformers (remote code, written into each export).

Besides the source architecture's usual fields (hidden_size, num_attention_heads, ...), it carries
``attention_target``: what each layer's attention became (mindedit.edit.config's MLA or GateSWA target, resolved),
and ``qk_norm`` (the source's per-head q/k RMSNorm, Qwen3)."""
from transformers import PretrainedConfig


class MindeditConfig(PretrainedConfig):
    model_type = "mindedit"
    keys_to_ignore_at_inference = ["past_key_values"]
