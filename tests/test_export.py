"""Exports other tools load: for tiny Llama, Qwen2, Qwen3 and Qwen3-MoE teachers and each target kind, HF
transformers (CPU torch) loads the export, as DeepSeek-V3 without remote code for an export_compatible MLA student
of a dense model, as the source's own architecture for a plain sliding window, else through the exported
modeling_mindedit.py, and its logits and cached greedy decoding equal mindedit's."""
import json

import numpy as np
import pytest
import mindspore as ms

from mindedit.edit import GateSWAConfig, MLAConfig, edit_model
from mindedit.edit.surgery import own_parameters
from mindedit.eval.generation import greedy_generate
from mindedit.io.export import export_format, save_pretrained
from mindedit.models import from_pretrained

WINDOW = 6
GATED = dict(window=WINDOW, sink_tokens=2, pattern="SF", gate_full_layers=True)
CASES = {
    "llama-gateswa": ("llama", GateSWAConfig(**GATED, sink_logit=True), "mindedit"),
    "qwen2-gateswa-headwise": ("qwen2", GateSWAConfig(**GATED, gate="headwise"), "mindedit"),
    "qwen3-gateswa": ("qwen3", GateSWAConfig(**GATED, sink_logit=True), "mindedit"),
    "qwen3_moe-gateswa": ("qwen3_moe", GateSWAConfig(**GATED, sink_logit=True), "mindedit"),
    "qwen3-plain-window": ("qwen3", GateSWAConfig(window=WINDOW, pattern="SF", sink_tokens=0, gate="none"), "qwen3"),
    "qwen2-plain-window": ("qwen2", GateSWAConfig(window=WINDOW, pattern="SF", sink_tokens=0, gate="none"), "qwen2"),
    "llama-mla": ("llama", MLAConfig(kv_lora_rank=16, qk_rope_head_dim=8), "deepseek_v3"),
    "qwen2-mla": ("qwen2", MLAConfig(kv_lora_rank=16, qk_rope_head_dim=8), "deepseek_v3"),
    "qwen3-mla-q_lora": ("qwen3", MLAConfig(kv_lora_rank=16, qk_rope_head_dim=8, q_lora_rank=24), "deepseek_v3"),
    "qwen3-mla-free": ("qwen3", MLAConfig(kv_lora_rank=16, qk_rope_head_dim=8, export_compatible=False), "mindedit"),
    "qwen3_moe-mla": ("qwen3_moe", MLAConfig(kv_lora_rank=16, qk_rope_head_dim=8), "mindedit"),
}


def perturbed_student(hf_models, rng, arch, target):
    """The student with every parameter of its own moved well away from the init (gates, sink logits included):
    every value must reach the export."""
    teacher = from_pretrained(hf_models[arch][1])
    student = edit_model(teacher, target, rng.integers(0, 256, (1, 32)))
    for name, p in own_parameters(student, teacher).items():
        if name.endswith("sinks"):  # from -20 (no effect) to logits that compete with the keys'
            p.set_data(ms.Tensor(rng.normal(0, 1, p.shape), p.dtype))
        elif p.requires_grad:
            p.set_data(p.value() + ms.Tensor(rng.normal(0, 0.3 if p.ndim == 1 else 0.05, p.shape), p.dtype))
    return student


def hf_load(out, fmt):
    import torch
    from transformers import AutoModelForCausalLM
    model, info = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=fmt == "mindedit",
                                                       dtype=torch.float32, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched weight
    return model.eval()


@pytest.mark.parametrize("case", CASES)
def test_hf_transformers_loads_the_export_with_equal_logits_and_decoding(hf_models, rng, tmp_path, case):
    import torch
    arch, target, fmt = CASES[case]
    student = perturbed_student(hf_models, rng, arch, target)
    assert export_format(student.config) == ("native" if fmt in ("qwen2", "qwen3") else fmt)
    out = save_pretrained(student, tmp_path / "export")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == fmt and cfg["torch_dtype"] == "float32"
    assert (out / "modeling_mindedit.py").is_file() == (fmt == "mindedit")
    if fmt == "deepseek_v3":
        assert cfg["rope_interleave"] is False and cfg["first_k_dense_replace"] == cfg["num_hidden_layers"]
    model = hf_load(out, fmt)
    assert type(model).__name__ == {"mindedit": "MindeditForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM",
                                    "qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM"}[fmt]

    ids = rng.integers(0, 256, (2, 3 * WINDOW + 2))  # longer than the window: masks and sinks matter
    ours = student(ms.Tensor(ids, ms.int32)).asnumpy()
    with torch.no_grad():
        theirs = model(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)

    prompt = ids[:1, :WINDOW + 3]  # cached decoding past the window on both sides
    expected = greedy_generate(student, prompt, 8)["tokens"]
    with torch.no_grad():
        got = model.generate(torch.tensor(prompt), max_new_tokens=8, min_new_tokens=8, do_sample=False)
    np.testing.assert_array_equal(got[:, prompt.shape[1]:].numpy(), expected)

    loaded = from_pretrained(out)  # and mindedit reads its own export back, whatever the format
    np.testing.assert_array_equal(loaded(ms.Tensor(ids, ms.int32)).asnumpy(), ours)


def test_export_is_sharded_with_an_index_past_the_size_limit(hf_models, rng, tmp_path):
    student = perturbed_student(hf_models, rng, "llama", MLAConfig(kv_lora_rank=16, qk_rope_head_dim=8))
    out = save_pretrained(student, tmp_path / "export", max_shard_bytes=100_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and all((out / f).is_file() for f in files) and not (out / "model.safetensors").exists()
    ids = ms.Tensor(rng.integers(0, 256, (1, 12)), ms.int32)
    np.testing.assert_array_equal(from_pretrained(out)(ids).asnumpy(), student(ids).asnumpy())
    hf_load(out, "deepseek_v3")


def test_export_keeps_bfloat16_weights_and_writes_tokenizer_files(hf_models, tmp_path):
    import torch
    from safetensors import safe_open
    from tokenizers import Tokenizer, models
    from transformers import AutoTokenizer
    src = hf_models["qwen3"][1]
    model = from_pretrained(src, "bfloat16")
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(256)}, unk_token="t0"))
    out = save_pretrained(model, tmp_path / "export", tok, source=src)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        w = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
    assert w.dtype == torch.bfloat16
    ref = hf_models["qwen3"][0].model.layers[0].self_attn.q_proj.weight.detach().to(torch.bfloat16)
    assert torch.equal(w, ref)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert AutoTokenizer.from_pretrained(out).convert_ids_to_tokens(5) == "t5"
    assert (out / "generation_config.json").is_file()
