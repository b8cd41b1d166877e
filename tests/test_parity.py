"""Logits parity against HF transformers (CPU torch) for every architecture the decoder covers."""
import copy

import numpy as np
import pytest
import torch
import mindspore as ms

from mindedit.models import from_pretrained

ARCHS = ["qwen3", "qwen3_moe", "qwen2", "llama"]


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.from_numpy(ids.astype(np.int64))).logits.float().numpy()


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers(hf_models, arch, rng):
    ref_model, path = hf_models[arch]
    ids = rng.integers(0, ref_model.config.vocab_size, (2, 80))
    ours = from_pretrained(path)(ms.Tensor(ids, ms.int32)).asnumpy()
    ref = hf_logits(ref_model, ids)
    assert ours.shape == ref.shape == (2, 80, ref_model.config.vocab_size)
    assert np.abs(ours - ref).max() <= 1e-4


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_graph_mode_matches_pynative(hf_models, arch, rng):
    _, path = hf_models[arch]
    model = from_pretrained(path)
    ids = ms.Tensor(rng.integers(0, 256, (2, 33)), ms.int32)
    eager = model(ids).asnumpy()
    graph = ms.jit(model.construct)(ids).asnumpy()
    assert np.abs(eager - graph).max() <= 1e-5


def test_bfloat16_checkpoint_loads_and_runs(hf_models, tmp_path, rng):
    """A bf16 checkpoint (how Qwen3 ships) loads into float32 exactly as torch upcasts it."""
    ref_model, _ = hf_models["qwen3"]
    bf16 = copy.deepcopy(ref_model).to(torch.bfloat16)
    bf16.save_pretrained(tmp_path)
    upcast = type(ref_model)(ref_model.config).eval()
    upcast.load_state_dict({k: v.float() for k, v in bf16.state_dict().items()}, strict=False)
    ids = rng.integers(0, 256, (2, 64))
    ours = from_pretrained(tmp_path, dtype="float32")(ms.Tensor(ids, ms.int32)).asnumpy()
    assert np.abs(ours - hf_logits(upcast, ids)).max() <= 1e-4
    # bf16 parameters (for Ascend; MindSpore's CPU backend has no BFloat16 Gather kernel, so no CPU forward)
    model_bf16 = from_pretrained(tmp_path, dtype="bfloat16")
    ours_params = dict(model_bf16.parameters_and_names())
    for name, t in bf16.state_dict().items():
        if name in ours_params:
            assert ours_params[name].dtype == ms.bfloat16
            np.testing.assert_array_equal(ours_params[name].float().asnumpy(), t.float().numpy())
