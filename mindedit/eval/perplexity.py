"""Perplexity over consecutive, non-overlapping windows of a token stream (no BOS added)."""
import math
import time

import numpy as np
import mindspore as ms
from mindspore import mint

from mindedit.utils.progress import Progress


def compile_token_nll(model):
    """A graph-mode function: ids [B, T] -> negative log-likelihood of tokens 1..T-1, [B, T-1] float32."""

    @ms.jit
    def token_nll(ids):
        logits = model(ids)[:, :-1]
        logp = mint.nn.functional.log_softmax(logits, dim=-1)
        target = ids[:, 1:].unsqueeze(-1)
        return -mint.gather(logp, -1, target).squeeze(-1)

    return token_nll


def windows(token_ids, seq_len: int, max_windows: int = 0) -> np.ndarray:
    """[K, seq_len] consecutive windows from the start; the tail shorter than seq_len is dropped."""
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len}: expected at least 2 tokens per window")
    n = len(token_ids) // seq_len
    if max_windows:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"the text has {len(token_ids)} tokens, fewer than one window of seq_len={seq_len}")
    return np.asarray(token_ids[: n * seq_len], dtype=np.int32).reshape(n, seq_len)


def perplexity(model, token_ids, seq_len: int, max_windows: int = 0, progress: bool = True) -> dict:
    batch = windows(token_ids, seq_len, max_windows)
    token_nll = compile_token_nll(model)
    bar = Progress(batch.size, "ppl") if progress else None
    total, count = 0.0, 0
    start = time.perf_counter()
    for row in batch:
        nll = token_nll(ms.Tensor(row[None]))
        total += float(nll.asnumpy().astype(np.float64).sum())
        count += seq_len - 1
        if bar:
            bar.update(seq_len, f"ppl {math.exp(total / count):.3f}")
    if bar:
        bar.close()
    elapsed = time.perf_counter() - start
    return {"ppl": math.exp(total / count), "nll": total / count, "tokens": count, "windows": len(batch),
            "seq_len": seq_len, "seconds": round(elapsed, 3), "tokens_per_s": round(batch.size / elapsed, 1)}
