"""from_pretrained on HF directories (single file, sharded) and GGUF files; bad input gets a named error."""
import json
import shutil

import numpy as np
import pytest
import torch
import mindspore as ms
from safetensors.numpy import load_file, save_file

from mindedit.io.hf import CheckpointError
from mindedit.models import ConfigError, from_pretrained


def logits(model, ids):
    return model(ms.Tensor(ids, ms.int32)).asnumpy()


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.from_numpy(ids.astype(np.int64))).logits.numpy()


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_sharded_checkpoint(hf_models, tmp_path, rng):
    ref, _ = hf_models["qwen3_moe"]
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ids = rng.integers(0, 256, (2, 64))
    assert np.abs(logits(from_pretrained(tmp_path), ids) - hf_logits(ref, ids)).max() <= 1e-4


def test_missing_tensor_is_named(hf_models, tmp_path):
    d = copy_model(hf_models["qwen2"][1], tmp_path / "m")
    tensors = load_file(d / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensors \['model\.layers\.1\.mlp\.up_proj\.weight'\]"):
        from_pretrained(d)


def test_unexpected_and_misshaped_tensors_are_named(hf_models, tmp_path):
    d = copy_model(hf_models["llama"][1], tmp_path / "m")
    tensors = load_file(d / "model.safetensors")
    save_file({**tensors, "model.layers.0.extra.weight": np.zeros(3, np.float32)}, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unexpected tensor 'model\.layers\.0\.extra"):
        from_pretrained(d)
    tensors["model.norm.weight"] = np.ones(7, np.float32)
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"'model\.norm\.weight' has shape \(7,\), the model expects \(64,\)"):
        from_pretrained(d)


def test_truncated_file_is_named(hf_models, tmp_path):
    d = copy_model(hf_models["llama"][1], tmp_path / "m")
    (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        from_pretrained(d)


@pytest.mark.parametrize("edit, message", [
    ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ({"num_key_value_heads": 3}, "num_attention_heads=4 is not a multiple of num_key_value_heads=3"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope type 'yarn' is not supported"),
])
def test_bad_config_is_named(hf_models, tmp_path, edit, message):
    d = copy_model(hf_models["qwen3"][1], tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(edit)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=f"config.json: {message}"):
        from_pretrained(d)


def test_not_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model"):
        from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no config.json"):
        from_pretrained(tmp_path)


def _permute_like_llama_cpp(w, n_head):
    """llama.cpp's converter interleaves the two rotary halves of each q/k head; mindedit must undo it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, path, quantize=None):
    import gguf
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_context_length(cfg.max_position_embeddings)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, t in model.state_dict().items():
        a = t.float().numpy()
        if name in names:
            gname = names[name]
        else:
            parts = name.split(".")
            gname = f"blk.{parts[2]}.{layer['.'.join(parts[3:-1])]}.{parts[-1]}"
            if ".attn_q." in gname:
                a = _permute_like_llama_cpp(a, cfg.num_attention_heads)
            if ".attn_k." in gname:
                a = _permute_like_llama_cpp(a, cfg.num_key_value_heads)
        if quantize is not None and a.ndim == 2:
            w.add_tensor(gname, gguf.quants.quantize(a, quantize), raw_dtype=quantize)
        else:
            w.add_tensor(gname, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_llama_matches_transformers(hf_models, tmp_path, rng):
    """Undoing llama.cpp's q/k row permutation is what makes the logits match (a wrong unpermute fails here)."""
    ref, _ = hf_models["llama"]
    path = tmp_path / "tiny.gguf"
    write_gguf(ref, path)
    ids = rng.integers(0, 256, (2, 64))
    assert np.abs(logits(from_pretrained(path), ids) - hf_logits(ref, ids)).max() <= 1e-4


def test_gguf_quantized_tensors_dequantize(hf_models, tmp_path, rng):
    import gguf
    ref, _ = hf_models["llama"]
    path = tmp_path / "tiny_q8.gguf"
    write_gguf(ref, path, quantize=gguf.GGMLQuantizationType.Q8_0)
    ids = rng.integers(0, 256, (1, 32))
    diff = np.abs(logits(from_pretrained(path), ids) - hf_logits(ref, ids))
    assert 0 < diff.max() < 0.05 * np.abs(hf_logits(ref, ids)).max()  # close, and really quantized
