"""A compiled CPU graph reuses its buffers from layer to layer: the peak of a training step grows with the number of
layers by about what the backward must keep, not by every intermediate. MindSpore's CPU graphs never reuse the
buffers of an implicitly broadcasting binary op, of Tensor.transpose or of mint.mean's backward
(docs/environment.md); mindedit's layers avoid them (mindedit.layers). Each measurement runs in its own process:
peak RSS is per process and a graph's memory is only freed with it."""
import json
import subprocess
import sys

import pytest

CHILD = r"""
import json, resource, sys
import numpy as np, mindspore as ms
from mindedit.data.assets import TINY_QWEN3
from mindedit.models import CausalLM, ModelConfig

layers, t, grad = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "grad"
shape = dict(TINY_QWEN3, vocab_size=1024, hidden_size=256, intermediate_size=512, num_attention_heads=4,
             num_key_value_heads=2, head_dim=64, num_hidden_layers=layers)
model = CausalLM(ModelConfig.from_hf_dict(shape, source="memory test"))
rng = np.random.default_rng(0)
for _, p in model.parameters_and_names():
    p.set_data(ms.Tensor(rng.normal(0.0, 0.02, tuple(p.shape)).astype(np.float32)))
ids = ms.Tensor(rng.integers(0, 1024, (1, t)).astype(np.int32))
params = model.trainable_params()

def loss(ids):
    return model(ids).astype(ms.float32).square().mean()

fn = ms.value_and_grad(loss, None, params) if grad else loss

@ms.jit
def step(ids):
    return fn(ids)

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = step(ids)
(out[0] if grad else out).asnumpy()
print(json.dumps({"peak_delta_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))
"""

T, HIDDEN = 2048, 256
ACTIVATION_MB = T * HIDDEN * 4 / 2 ** 20  # one [T, hidden] float32 tensor: 2 MiB


def peak_delta_mb(layers: int, mode: str) -> float:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(layers), str(T), mode], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_delta_mb"]


@pytest.mark.parametrize("mode, bound", [("forward", 2), ("grad", 16)])
def test_a_compiled_step_grows_per_layer_by_what_it_must_keep(mode, bound):
    """Forward only: buffers are reused, so a layer adds (almost) nothing; forward and backward: a layer keeps its
    activations for the backward, measured at ~10 [T, hidden] tensors' worth (its MLP's are 2x wider). Each of the
    patterns named above, planted back into one layer kind, adds several more per layer."""
    per_layer = (peak_delta_mb(6, mode) - peak_delta_mb(2, mode)) / 4
    assert per_layer < bound * ACTIVATION_MB, \
        f"{mode}: {per_layer:.1f} MiB per layer at T={T}, more than {bound} x {ACTIVATION_MB:.0f} MiB"
