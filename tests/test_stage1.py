"""Stage 1 on a tiny Qwen3: losses fall, only student attention parameters move, no gradient crosses layers."""
import numpy as np
import pytest
import mindspore as ms

from mindedit.distill.optim import AdamW
from mindedit.distill.stage1 import Stage1Loss
from mindedit.edit import GateSWAConfig, MLAConfig, edit_model
from mindedit.edit.surgery import own_parameters
from mindedit.models import from_pretrained
from mindedit.parallel.pipeline import SingleStage


def attention_params(student, teacher) -> list:
    return [p for n, p in own_parameters(student, teacher).items() if "self_attn" in n and p.requires_grad]


@pytest.mark.parametrize("kind", ["mla", "gateswa"])
def test_stage1_trains_student_attention_only(hf_models, kind, rng):
    teacher = from_pretrained(hf_models["qwen3"][1])
    calib = rng.integers(0, 256, (2, 64))
    target = (MLAConfig(kv_lora_rank=16, qk_rope_head_dim=8) if kind == "mla"
              else GateSWAConfig(window=8, sink_tokens=0, sink_logit=True, pattern="SF", gate_full_layers=True))
    student = edit_model(teacher, target, calib)
    before = {n: p.asnumpy().copy() for n, p in teacher.parameters_and_names()}
    opt = AdamW(attention_params(student, teacher))
    micro_step = SingleStage(Stage1Loss(teacher, student)).bind(opt.params, opt.accumulate)
    ids = ms.Tensor(rng.integers(0, 256, (2, 48)), ms.int32)
    lr, one = ms.Tensor(1e-3, ms.float32), ms.Tensor(1.0, ms.float32)
    losses = []
    for _ in range(20):
        losses.append(micro_step(ids))
        opt.apply(lr, one)
    first, last = losses[0][1].asnumpy(), losses[-1][1].asnumpy()
    assert first.shape == (2,) and last.sum() < 0.8 * first.sum()
    changed = first > 0  # a gated full layer starts exactly at the teacher: nothing to learn there
    assert changed.any() and (last[changed] < first[changed]).all() and (last[~changed] <= 1e-9).all()
    for n, p in teacher.parameters_and_names():  # the teacher (and the shared backbone) did not move
        np.testing.assert_array_equal(p.asnumpy(), before[n], err_msg=n)


def test_no_gradient_crosses_layers(hf_models, rng):
    teacher = from_pretrained(hf_models["llama"][1])
    student = edit_model(teacher, MLAConfig(kv_lora_rank=16, qk_rope_head_dim=8), rng.integers(0, 256, (1, 64)))
    loss = Stage1Loss(teacher, student)
    params = attention_params(student, teacher)
    ids = ms.Tensor(rng.integers(0, 256, (1, 32)), ms.int32)
    # gradient of layer 0's loss alone: nonzero for layer 0's attention, exactly zero for layer 1's
    grads = ms.grad(lambda i: loss(i)[1][0], None, params)(ids)
    by_layer = {0: 0.0, 1: 0.0}
    for p, g in zip(params, grads):
        by_layer[int(p.name.split(".")[3])] += float(np.abs(g.asnumpy()).sum())
    assert by_layer[0] > 0 and by_layer[1] == 0
