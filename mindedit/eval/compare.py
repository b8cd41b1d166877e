"""Teacher vs student on the same text: per-token KL(teacher || student), top-1 agreement and both NLLs,
computed chunk by chunk in one compiled graph (the logits never leave it)."""
import functools
import math

import numpy as np
import mindspore as ms
from mindspore import mint, ops

from mindedit.eval.perplexity import run_chunked, windows
from mindedit.losses import token_kl
from mindedit.utils.progress import Progress


@functools.lru_cache(maxsize=None)
def compile_chunk_compare(teacher, student):
    """One graph per (teacher, student): the initial and the final evaluation run the same one (the trained weights
    are the same Parameters), and a compiled graph's memory is only freed with its process."""
    @ms.jit
    def step(ids, targets, caches, pos):
        lt = teacher(ids, caches[0], pos)
        ls = student(ids, caches[1], pos)
        logp_t = mint.nn.functional.log_softmax(lt, dim=-1)
        logp_s = mint.nn.functional.log_softmax(ls, dim=-1)
        kl = token_kl(logp_t, logp_s)
        agree = (ops.argmax(lt, -1) == ops.argmax(ls, -1)).astype(ms.float32)
        tgt = targets.unsqueeze(-1)
        nll_t = -mint.gather(logp_t, -1, tgt).squeeze(-1)
        nll_s = -mint.gather(logp_s, -1, tgt).squeeze(-1)
        return kl, agree, nll_t, nll_s

    return step


def compare(teacher, student, token_ids, seq_len: int, max_windows: int = 0, chunk: int = 512,
            progress: bool = False) -> dict:
    batch = windows(token_ids, seq_len, max_windows)
    step = compile_chunk_compare(teacher, student)
    sums = np.zeros(4)
    count = 0
    bar = Progress(batch.size, "compare") if progress else None
    for row in batch:
        kl, agree, nll_t, nll_s = run_chunked(step, [teacher, student], row[None], chunk)
        sums += [kl.sum(), agree.sum(), nll_t.sum(), nll_s.sum()]
        count += kl.size
        if bar:
            bar.update(seq_len)
    if bar:
        bar.close()
    kl, agree, nll_t, nll_s = sums / count
    return {"kl": kl, "top1_agreement": agree, "teacher_ppl": math.exp(nll_t), "student_ppl": math.exp(nll_s),
            "ppl_ratio": math.exp(nll_s - nll_t), "tokens": count, "seq_len": seq_len}
