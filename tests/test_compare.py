"""Teacher vs student evaluation (mindedit.eval.compare) against a NumPy reference on a tiny model."""
import math

import numpy as np
import mindspore as ms

from mindedit.edit import GateSWAConfig, edit_model
from mindedit.eval.compare import compare
from mindedit.models import from_pretrained


def numpy_reference(teacher, student, ids):
    """KL(t || s), top-1 agreement and both mean NLLs over next-token predictions, from full logits."""
    lt = teacher(ms.Tensor(ids[None], ms.int32)).asnumpy()[0, :-1].astype(np.float64)
    ls = student(ms.Tensor(ids[None], ms.int32)).asnumpy()[0, :-1].astype(np.float64)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))
    pt, ps = log_softmax(lt), log_softmax(ls)
    tgt = ids[1:]
    nll_t = -pt[np.arange(len(tgt)), tgt].mean()
    nll_s = -ps[np.arange(len(tgt)), tgt].mean()
    return {"kl": (np.exp(pt) * (pt - ps)).sum(-1).mean(), "top1_agreement": (lt.argmax(-1) == ls.argmax(-1)).mean(),
            "teacher_ppl": math.exp(nll_t), "student_ppl": math.exp(nll_s), "ppl_ratio": math.exp(nll_s - nll_t)}


def test_compare_matches_numpy_and_the_teacher_against_itself_is_exact(hf_models, rng):
    teacher = from_pretrained(hf_models["qwen3"][1])
    student = edit_model(teacher, GateSWAConfig(window=8, sink_tokens=0, pattern="SF"), rng.integers(0, 256, (1, 64)))
    ids = rng.integers(0, 256, 96).astype(np.int32)
    got = compare(teacher, student, ids, seq_len=96, chunk=32)
    want = numpy_reference(teacher, student, ids)
    assert got["tokens"] == 95 and want["kl"] > 1e-3  # the window really changes the student
    for key, value in want.items():
        assert abs(got[key] - value) <= 1e-4 * max(1.0, abs(value)), (key, got[key], value)
    same = compare(teacher, teacher, ids, seq_len=96, chunk=32)
    assert abs(same["kl"]) < 1e-6 and same["top1_agreement"] == 1.0 and abs(same["ppl_ratio"] - 1.0) < 1e-6
