"""Perplexity over consecutive, non-overlapping windows of a token stream (no BOS added).

Long windows are scored in chunks through the model's caches (chunked prefill): one compiled graph for a chunk
of ``chunk`` tokens attends to everything before it via the cache, so memory is one chunk's activations (a
[chunk, vocab] log-softmax among them) plus the caches, whatever the context length (docs/environment.md).
"""
import math
import time

import numpy as np
import mindspore as ms
from mindspore import mint

from mindedit.errors import MindeditError
from mindedit.utils.progress import Progress


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def compile_chunk_nll(model):
    """Graph-mode step: (ids [B, T], targets [B, T], (caches,), pos) -> (nll [B, T] float32,); the caches are
    written in place."""

    @ms.jit
    def chunk_nll(ids, targets, caches, pos):
        logp = mint.nn.functional.log_softmax(model(ids, caches[0], pos), dim=-1)
        return (-mint.gather(logp, -1, targets.unsqueeze(-1)).squeeze(-1),)

    return chunk_nll


def run_chunked(step, models, ids: np.ndarray, chunk: int) -> list:
    """Scores next tokens of ids [B, T] chunk by chunk. ``step(inputs, targets, caches, pos)`` returns a tuple of
    per-token outputs and writes the chunk into the caches; ``models`` are those whose caches it fills (each gets
    a full cache).
    Returns each per-token output as [B, T-1] float64."""
    b, t = ids.shape
    chunk = min(chunk, t - 1)
    n = round_up(t - 1, chunk)  # padded to whole chunks: one graph shape, compiled once
    inputs = np.zeros((b, n), np.int32)
    targets = np.zeros((b, n), np.int32)
    inputs[:, :t - 1], targets[:, :t - 1] = ids[:, :-1], ids[:, 1:]
    caches = ms.mutable(tuple(m.init_caches(b, n, full=True) for m in models))
    outs = []
    for s in range(0, n, chunk):
        values = step(ms.Tensor(inputs[:, s:s + chunk]), ms.Tensor(targets[:, s:s + chunk]), caches,
                      ms.Tensor(np.array([s], np.int32)))
        outs.append([v.asnumpy().astype(np.float64) for v in values])
    return [np.concatenate(col, axis=1)[:, :t - 1] for col in zip(*outs)]


def token_nll(model, ids: np.ndarray, chunk: int = 512, step=None) -> np.ndarray:
    """NLL of tokens 1..T-1 of each row of ids [B, T] given everything before them: [B, T-1] float64."""
    return run_chunked(step or compile_chunk_nll(model), [model], ids, chunk)[0]


def windows(token_ids, seq_len: int, max_windows: int = 0) -> np.ndarray:
    """[K, seq_len] consecutive windows from the start; the tail shorter than seq_len is dropped."""
    if seq_len < 2:
        raise MindeditError(f"seq_len={seq_len}: expected at least 2 tokens per window")
    n = len(token_ids) // seq_len
    if max_windows:
        n = min(n, max_windows)
    if n == 0:
        raise MindeditError(f"the text has {len(token_ids)} tokens, fewer than one window of seq_len={seq_len}")
    return np.asarray(token_ids[: n * seq_len], dtype=np.int32).reshape(n, seq_len)


def perplexity(model, token_ids, seq_len: int, max_windows: int = 0, chunk: int = 512,
               progress: bool = True) -> dict:
    batch = windows(token_ids, seq_len, max_windows)
    step = compile_chunk_nll(model)
    bar = Progress(batch.size, "ppl") if progress else None
    total, count = 0.0, 0
    start = time.perf_counter()
    for row in batch:
        nll = token_nll(model, row[None], chunk, step)
        total += float(nll.sum())
        count += nll.size
        if bar:
            bar.update(seq_len, f"ppl {math.exp(total / count):.3f}")
    if bar:
        bar.close()
    elapsed = time.perf_counter() - start
    return {"ppl": math.exp(total / count), "nll": total / count, "tokens": count, "windows": len(batch),
            "seq_len": seq_len, "seconds": round(elapsed, 3), "tokens_per_s": round(batch.size / elapsed, 1)}
