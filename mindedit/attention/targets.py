"""The attention module of each layer of a converted model, from its ``attention_target`` (the resolved target
as a plain dict, as stored in an exported config.json). Used both when a student is made from a teacher and when
an exported student is loaded back."""
from dataclasses import asdict, replace
from types import SimpleNamespace

import mindspore as ms

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


def layer_modules(cfg, target) -> tuple:
    """(teacher modules, student modules) of a model of config ``cfg`` converted to ``target`` (an MLAConfig or
    GateSWAConfig), one per layer and the same object for equal layers, zero-initialised: what the KV report and
    the memory plan ask about caches and parameters."""
    if target.kind == "gateswa" and target.layer_types is None:  # pattern auto, unresolved: the count is known
        full = target.num_full()
        target = replace(target, layer_types=["full"] * full + ["sliding"] * (cfg.num_hidden_layers - full))
    spec = asdict(target)
    teacher = GQAAttention(cfg, ms.float32)
    built = {}
    student = []
    for i in range(cfg.num_hidden_layers):
        key = spec["layer_types"][i] if target.kind == "gateswa" else "mla"
        if key not in built:
            built[key] = build_attention(cfg, spec, i, ms.float32)
        student.append(built[key])
    return [teacher] * cfg.num_hidden_layers, student
