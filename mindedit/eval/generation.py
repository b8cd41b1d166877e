"""Greedy generation with the model's own per-layer caches (full KV, ring buffer or latent, whichever the
attention modules make), written in place. The prompt is prefilled in fixed-size chunks through full caches (so
any prompt length runs in one chunk's memory), which each layer then shrinks to its decode cache (a sliding
window keeps only its ring); decoding is one token per call. Two compiled graphs: the chunk and the token."""
import time

import numpy as np
import mindspore as ms

from mindedit.attention import cache_nbytes
from mindedit.errors import MindeditError
from mindedit.eval.perplexity import round_up
from mindedit.utils.progress import Progress

PREFILL_CHUNK = 512


def compiled_step(model):
    """The model's cached step (``next_logits``), jitted once per model and kept on it (so it lives as long as the
    model): its graphs, one per input shape, are reused by every generation instead of compiled again for each.
    (MindSpore still warns that it "has been compiled again" when a second model's step compiles: the warning is
    keyed by the function's source line and the jit object's creation, and each model needs graphs of its own.)"""
    step = model.__dict__.get("_generation_step")
    if step is None:
        def next_logits(ids, caches, pos, last):  # a plain function: jitting the method itself would leave its
            return model.next_logits(ids, caches, pos, last)  # graph to later graphs of the model (environment.md)
        step = ms.jit(next_logits)
        object.__setattr__(model, "_generation_step", step)
    return step


def prefill(model, ids: np.ndarray, capacity: int, chunk: int = PREFILL_CHUNK):
    """ids [B, T] through full caches of ``capacity`` slots, chunk by chunk (the last one padded: one graph
    shape). Returns (the last prompt token's logits [B, vocab] as numpy, the layers' decode caches)."""
    batch, length = ids.shape
    chunk = min(chunk, round_up(length, 64))
    padded = np.zeros((batch, round_up(length, chunk)), np.int32)
    padded[:, :length] = ids
    caches = ms.mutable(model.init_caches(batch, max(capacity, padded.shape[1]), full=True))
    step = compiled_step(model)
    for s in range(0, padded.shape[1], chunk):
        last = min(length - 1 - s, chunk - 1)
        logits = step(ms.Tensor(padded[:, s:s + chunk]), caches, ms.Tensor([s], ms.int32),
                      ms.Tensor([last], ms.int32))
    return logits.asnumpy(), ms.mutable(model.shrink_caches(caches, length))


def greedy_generate(model, prompt_ids, max_new_tokens: int, eos_ids=(), use_cache: bool = True,
                    progress: bool = False, capacity_multiple: int = 64, keep_logits: bool = False,
                    chunk: int = PREFILL_CHUNK) -> dict:
    """prompt_ids [B, T] (or a flat list for B=1). Returns {"tokens": [B, n] new ids, "seconds",
    "prefill_seconds", "decode_tokens_per_s", "cache_bytes"}. ``decode_tokens_per_s`` is the steady state: it
    leaves out the prefill and the first decode step (which compiles the decode graph); None below 3 tokens.
    "cache_bytes" counts the decode caches (after prefill, each layer's own: a window's ring, not the full cache).

    ``use_cache=False`` recomputes the whole sequence each step (PyNative, slow): the oracle the cached path
    must equal. Generation stops early only when every row has produced an EOS id. ``keep_logits``: also return
    "logits", each step's next-token logits [B, n, vocab] (float32).
    """
    ids = np.asarray(prompt_ids, dtype=np.int32)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.shape[1] == 0:
        raise MindeditError("the prompt is empty: generation needs at least one token")
    if max_new_tokens < 1:
        raise MindeditError(f"max_new_tokens={max_new_tokens}: expected >= 1")
    eos = np.array(sorted(set(int(e) for e in eos_ids)), np.int64)
    batch, prompt_len = ids.shape
    new = np.zeros((batch, 0), np.int32)
    finished = np.zeros(batch, bool)
    bar = Progress(max_new_tokens, "generate") if progress else None
    start = time.perf_counter()
    if use_cache:
        capacity = round_up(prompt_len + max_new_tokens, capacity_multiple)
        last, caches = prefill(model, ids, capacity, chunk)
        step = compiled_step(model)
    else:
        last = model(ms.Tensor(ids))[:, -1].asnumpy()
    stamps, kept = [], []
    while True:
        if keep_logits:
            kept.append(last)
        nxt = last.argmax(-1).astype(np.int32)  # (on the host: [B, vocab] is 0.2 MB per row; argmax ~20 us)
        stamps.append(time.perf_counter())
        new = np.concatenate([new, nxt[:, None]], axis=1)
        if bar:
            bar.update(1)
        finished |= np.isin(nxt, eos)
        if finished.all() or new.shape[1] == max_new_tokens:
            break
        if use_cache:  # the token just chosen, at position prompt_len + n - 1
            last = step(ms.Tensor(nxt[:, None]), caches, ms.Tensor([prompt_len + new.shape[1] - 1], ms.int32),
                        ms.Tensor([0], ms.int32)).asnumpy()
        else:
            last = model(ms.Tensor(np.concatenate([ids, new], axis=1)))[:, -1].asnumpy()
    if bar:
        bar.close()
    steady = (len(stamps) - 2) / (stamps[-1] - stamps[1]) if len(stamps) > 2 else None
    out = {"tokens": new, "seconds": time.perf_counter() - start, "prefill_seconds": stamps[0] - start,
           "decode_tokens_per_s": steady, "cache_bytes": cache_nbytes(caches) if use_cache else 0}
    if keep_logits:
        out["logits"] = np.stack(kept, axis=1)
    return out
