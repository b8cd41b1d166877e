"""GGUF files (llama.cpp): metadata -> HF config dict, tensors dequantized -> HF names and layouts."""
import re
from pathlib import Path

import numpy as np

from mindedit.io.hf import CheckpointError

# GGUF architecture name -> HF model_type
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "qwen3moe": "qwen3_moe"}

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "ffn_gate_inp.weight": "mlp.gate.weight",
}
_EXPERT_NAMES = {"ffn_gate_exps.weight": "gate_proj", "ffn_up_exps.weight": "up_proj",
                 "ffn_down_exps.weight": "down_proj"}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}


def _reader(path: Path):
    import gguf
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from None


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def read_config(path: Path, reader=None) -> dict:
    """HF-style config dict from GGUF metadata."""
    reader = reader or _reader(path)
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: general.architecture={arch!r} is not supported; expected one of "
                              f"{sorted(ARCHITECTURES)}")

    def need(key):
        v = _field(reader, f"{arch}.{key}")
        if v is None:
            raise CheckpointError(f"{path}: missing metadata {arch}.{key}")
        return v

    names = {t.name for t in reader.tensors}
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    cfg = {
        "model_type": ARCHITECTURES[arch],
        "vocab_size": int(embd.shape[1]),
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, f"{arch}.feed_forward_length", 0)),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
        "head_dim": int(_field(reader, f"{arch}.attention.key_length", hidden // heads)),
        "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(_field(reader, f"{arch}.context_length", 32768)),
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
    }
    if arch == "qwen3moe":
        cfg.update(num_experts=int(need("expert_count")), num_experts_per_tok=int(need("expert_used_count")),
                   moe_intermediate_size=int(need("expert_feed_forward_length")), norm_topk_prob=True)
    return cfg


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's interleaving of q/k rows for llama models (back to HF's rotate_half layout)."""
    out = w.shape[0]
    hd = out // n_head
    return w.reshape(n_head, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_tensors(path: Path, config: dict, reader=None):
    """Yields (HF name, float32 array, path) for every tensor in the file."""
    import gguf
    reader = reader or _reader(path)
    llama = config["model_type"] == "llama"
    for t in reader.tensors:
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        except (NotImplementedError, ValueError) as e:
            raise CheckpointError(f"{path}: tensor {t.name!r} of type {t.tensor_type.name} cannot be "
                                  f"dequantized ({e})") from None
        w = w.reshape([int(x) for x in reversed(t.shape)]) if w.ndim != len(t.shape) else w
        if t.name in _GLOBAL_NAMES:
            yield _GLOBAL_NAMES[t.name], w, path
            continue
        m = re.fullmatch(r"blk\.(\d+)\.(.+)", t.name)
        if not m:
            raise CheckpointError(f"{path}: unknown tensor {t.name!r}")
        layer, rest = int(m.group(1)), m.group(2)
        prefix = f"model.layers.{layer}."
        if rest in _EXPERT_NAMES:
            for e in range(w.shape[0]):
                yield f"{prefix}mlp.experts.{e}.{_EXPERT_NAMES[rest]}.weight", w[e], path
            continue
        if rest not in _LAYER_NAMES:
            raise CheckpointError(f"{path}: unknown tensor {t.name!r}")
        if llama and rest.startswith("attn_q."):
            w = _unpermute(w, config["num_attention_heads"])
        elif llama and rest.startswith("attn_k."):
            w = _unpermute(w, config["num_key_value_heads"])
        yield prefix + _LAYER_NAMES[rest], w, path


def tokenizer_spec(path: Path, reader=None) -> dict:
    """The embedded byte-level BPE vocabulary: tokens, merges, token types, pre-tokenizer name, special ids."""
    reader = reader or _reader(path)
    tokens = _field(reader, "tokenizer.ggml.tokens")
    if tokens is None:
        raise CheckpointError(f"{path}: no embedded tokenizer (tokenizer.ggml.tokens)")
    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise CheckpointError(f"{path}: tokenizer.ggml.model={model!r}; only byte-level BPE ('gpt2') is supported")
    return {
        "tokens": tokens,
        "merges": _field(reader, "tokenizer.ggml.merges") or [],
        "token_type": _field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens),
        "pre": _field(reader, "tokenizer.ggml.pre", "default"),
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "chat_template": _field(reader, "tokenizer.chat_template"),
    }


def open_reader(path: Path):
    return _reader(path)
