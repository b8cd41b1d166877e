"""The attention module of each layer of a converted model, from its ``attention_target`` (the resolved target
as a plain dict, as stored in an exported config.json). Used both when a student is made from a teacher and when
an exported student is loaded back."""
from types import SimpleNamespace

from mindedit.attention.gateswa import GateSWAAttention
from mindedit.attention.gqa import GQAAttention
from mindedit.attention.mla import MLAAttention


def build_attention(cfg, target: dict, layer: int, dtype):
    kind = target.get("kind")
    if kind == "mla":
        return MLAAttention(cfg, SimpleNamespace(**target), dtype)
    if kind == "gateswa":
        sliding = target["layer_types"][layer] == "sliding"
        if not sliding and not target["gate_full_layers"]:
            return GQAAttention(cfg, dtype)  # a full layer kept exactly as the source's
        return GateSWAAttention(cfg, target["window"] if sliding else 0, target["sink_tokens"] if sliding else 0,
                                target["sink_logit"] and sliding, target["gate"], dtype)
    raise ValueError(f"attention_target.kind={kind!r}: expected 'mla' or 'gateswa'")
