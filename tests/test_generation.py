"""KV-cached greedy decoding (compiled prefill + decode graphs) equals full recomputation."""
import numpy as np
import pytest

from mindedit.eval.generation import greedy_generate
from mindedit.models import from_pretrained


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_moe", "llama"])
def test_cached_decode_equals_recomputation(hf_models, arch, rng):
    model = from_pretrained(hf_models[arch][1])
    prompt = rng.integers(0, 256, (2, 11))
    cached = greedy_generate(model, prompt, 14, keep_logits=True)
    full = greedy_generate(model, prompt, 14, use_cache=False, keep_logits=True)
    assert cached["tokens"].shape == (2, 14) and cached["logits"].shape == (2, 14, model.config.vocab_size)
    np.testing.assert_array_equal(cached["tokens"], full["tokens"])
    np.testing.assert_allclose(cached["logits"], full["logits"], rtol=0, atol=1e-4)
    # fixed capacity: prompt + new tokens rounded up to 64 slots, k and v, fp32
    cfg = model.config
    assert cached["cache_bytes"] == cfg.num_hidden_layers * 2 * 2 * cfg.num_key_value_heads * 64 * cfg.head_dim * 4


def test_generation_matches_transformers(hf_models, rng):
    import torch
    ref, path = hf_models["qwen3"]
    prompt = rng.integers(0, 256, (1, 9))
    ours = greedy_generate(from_pretrained(path), prompt, 10)["tokens"]
    with torch.no_grad():
        theirs = ref.generate(torch.from_numpy(prompt.astype(np.int64)), max_new_tokens=10, do_sample=False,
                              min_new_tokens=10)[:, 9:].numpy()
    np.testing.assert_array_equal(ours, theirs)


def test_eos_stops_generation(hf_models, rng):
    model = from_pretrained(hf_models["qwen3"][1])
    prompt = rng.integers(0, 256, (1, 5))
    first = list(greedy_generate(model, prompt, 6)["tokens"][0])
    stop_at = first.index(first[2])  # the first time that token appears
    stopped = greedy_generate(model, prompt, 6, eos_ids=[int(first[2])])["tokens"][0]
    assert list(stopped) == first[:stop_at + 1]
