"""One compiled step of a random Qwen3-shaped model (tests/test_memory.py): prints the peak RSS it added, in MiB.

    python tests/tools/memory_step.py LAYERS TOKENS forward|grad|frozen

frozen: the forward of a frozen model (CausalLM.freeze), as the teacher's.
"""
import json, resource, sys
import numpy as np, mindspore as ms
from mindedit.data.assets import TINY_QWEN3
from mindedit.models import CausalLM, ModelConfig

layers, t, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
grad = mode == "grad"
shape = dict(TINY_QWEN3, vocab_size=1024, hidden_size=256, intermediate_size=512, num_attention_heads=4,
             num_key_value_heads=2, head_dim=64, num_hidden_layers=layers)
model = CausalLM(ModelConfig.from_hf_dict(shape, source="memory test"))
rng = np.random.default_rng(0)
for _, p in model.parameters_and_names():
    p.set_data(ms.Tensor(rng.normal(0.0, 0.02, tuple(p.shape)).astype(np.float32)))
if mode == "frozen":
    model.freeze()
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
