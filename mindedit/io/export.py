"""``save_pretrained``: a model as a directory HF transformers loads (config.json, safetensors in the model's dtype,
sharded with an index past ``max_shard_bytes``, tokenizer files, generation_config.json), written into a temp
directory and renamed into place.

The format is the nearest native transformers architecture that expresses the model exactly (``export_format``):
- ``native``: the source's own (a teacher; a GateSWA student that is a plain sliding window, no gate, no sinks,
  over Qwen2 / Qwen3: their ``layer_types`` + ``sliding_window``);
- ``deepseek_v3``: an ``export_compatible`` MLA student of a dense source, loaded without remote code (and read by
  DeepSeek serving stacks);
- ``mindedit``: everything else, with ``auto_map`` and the ``modeling_mindedit.py`` of mindedit/io/hf_remote
  copied next to the weights (``trust_remote_code=True``).
Every config.json also carries ``mindedit``: the full ModelConfig, from which mindedit.models.from_pretrained
rebuilds the very same modules whatever the format on top.
"""
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from mindedit.utils.files import atomic_dir, atomic_write_json

MAX_SHARD_BYTES = 5 * 2 ** 30  # (HF's default shard size)
REMOTE_CODE = Path(__file__).parent / "hf_remote"
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "generation_config.json")


def export_format(cfg) -> str:
    target = cfg.attention_target
    if not target:
        return "native"
    if target["kind"] == "mla":
        return "deepseek_v3" if target["export_compatible"] and not cfg.num_experts else "mindedit"
    plain = target["gate"] == "none" and not target["sink_tokens"] and not target["sink_logit"]
    return "native" if plain and cfg.model_type in ("qwen2", "qwen3") else "mindedit"


def hf_config(cfg, dtype: str) -> dict:
    """config.json of ``cfg`` (a mindedit ModelConfig) in its export format."""
    fmt, target = export_format(cfg), cfg.attention_target
    d = cfg.to_hf_dict()
    if fmt == "deepseek_v3":
        d = {k: d[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
                               "bos_token_id", "eos_token_id", "hidden_act")}
        d.update({k: target[k] for k in ("kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim",
                                         "v_head_dim")})
        d.update(model_type="deepseek_v3", architectures=["DeepseekV3ForCausalLM"],
                 num_key_value_heads=cfg.num_attention_heads,  # keys are expanded per head from the latent
                 first_k_dense_replace=cfg.num_hidden_layers,  # a dense MLP in every layer (dense source)
                 rope_interleave=False, rope_theta=target["rope_theta"],
                 rope_parameters={"rope_type": "default", "rope_theta": target["rope_theta"]},
                 attention_bias=cfg.attention_bias)
    elif fmt == "native" and target:
        d.update(use_sliding_window=True, sliding_window=target["window"], max_window_layers=0,
                 layer_types=[t + "_attention" for t in target["layer_types"]])
    elif fmt == "mindedit":
        d.update(model_type="mindedit", architectures=["MindeditForCausalLM"], qk_norm=cfg.qk_norm,
                 attention_bias=cfg.attention_bias, attention_target=target,
                 auto_map={"AutoConfig": "configuration_mindedit.MindeditConfig",
                           "AutoModelForCausalLM": "modeling_mindedit.MindeditForCausalLM"})
    d.update(torch_dtype=dtype, dtype=dtype, mindedit=asdict(cfg))
    return d


def hf_tensors(model) -> dict:
    """The model's weights by parameter name (HF's, and DeepSeek-V3's for MLA), in the model's dtype (numpy;
    bfloat16 included); a tied LM head is left out."""
    cfg = model.config
    tensors = {}
    for name, p in model.parameters_and_names():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        tensors[name] = np.ascontiguousarray(p.asnumpy())  # (p.value() has no bfloat16 CPU kernel)
    return tensors


def write_weights(out: Path, tensors: dict, max_shard_bytes: int):
    """model.safetensors, or model-0000i-of-0000n.safetensors + model.safetensors.index.json past the limit."""
    shards, size = [{}], 0
    for name, array in tensors.items():
        if shards[-1] and size + array.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in shard})
    index = {"metadata": {"total_size": sum(a.nbytes for a in tensors.values())}, "weight_map": weight_map}
    atomic_write_json(out / "model.safetensors.index.json", index)


def write_tokenizer(out: Path, tokenizer, cfg, source):
    """tokenizer.json, and the source's tokenizer_config / special tokens / chat template / generation config when
    it is an HF directory; for a GGUF source, a tokenizer_config (with the GGUF's chat template) and
    generation_config written from its ids."""
    if tokenizer is not None:
        tokenizer.save(str(out / "tokenizer.json"))
    src = Path(source) if source is not None else None
    copied = set()
    if src is not None and src.is_dir():
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, out / name)
                copied.add(name)
    eos = cfg.eos_ids
    if "generation_config.json" not in copied:
        gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": eos[0] if len(eos) == 1 else eos or None}
        atomic_write_json(out / "generation_config.json", {k: v for k, v in gen.items() if v is not None})
    if tokenizer is not None and "tokenizer_config.json" not in copied:
        tc = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "model_max_length": cfg.max_position_embeddings}
        for key, ids in (("bos_token", [cfg.bos_token_id] if cfg.bos_token_id is not None else []),
                         ("eos_token", eos)):
            if ids and tokenizer.id_to_token(ids[0]) is not None:
                tc[key] = tokenizer.id_to_token(ids[0])
        if src is not None and src.suffix == ".gguf":
            from mindedit.io.gguf import tokenizer_spec
            template = tokenizer_spec(src)["chat_template"]
            if template:
                tc["chat_template"] = template
        atomic_write_json(out / "tokenizer_config.json", tc)


def save_pretrained(model, out_dir, tokenizer=None, source=None, max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """``tokenizer``: a tokenizers.Tokenizer; ``source``: the teacher's path (its tokenizer side files are copied
    when it is an HF directory)."""
    out_dir = Path(out_dir)
    tensors = hf_tensors(model)
    dtype = str(next(iter(tensors.values())).dtype)
    with atomic_dir(out_dir) as tmp:
        cfg = hf_config(model.config, dtype)
        atomic_write_json(tmp / "config.json", cfg)
        write_weights(tmp, tensors, max_shard_bytes)
        write_tokenizer(tmp, tokenizer, model.config, source)
        if cfg["model_type"] == "mindedit":
            for file in ("configuration_mindedit.py", "modeling_mindedit.py"):
                shutil.copyfile(REMOTE_CODE / file, tmp / file)
    return out_dir
