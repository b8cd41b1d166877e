"""Greedy generation with the model's own per-layer caches (full KV, ring buffer or latent, whichever the
attention modules make). Prefill and decode are two compiled graphs (static shapes, fixed cache capacity)."""
import time

import numpy as np
import mindspore as ms

from mindedit.attention import cache_nbytes
from mindedit.errors import MindeditError
from mindedit.utils.progress import Progress


def compiled_step(model):
    """The model's cached step, jitted once per model and kept on it (so it lives as long as the model): its
    graphs, one per input shape, are reused by every generation instead of compiled again for each."""
    step = model.__dict__.get("_generation_step")
    if step is None:
        step = ms.jit(model.construct)
        object.__setattr__(model, "_generation_step", step)
    return step


def greedy_generate(model, prompt_ids, max_new_tokens: int, eos_ids=(), use_cache: bool = True,
                    progress: bool = False, capacity_multiple: int = 64, keep_logits: bool = False) -> dict:
    """prompt_ids [B, T] (or a flat list for B=1). Returns {"tokens": [B, n] new ids, "seconds",
    "prefill_seconds", "decode_tokens_per_s", "cache_bytes"}. ``decode_tokens_per_s`` is the steady state: it
    leaves out the prefill and the first decode step (which compiles the decode graph); None below 3 tokens.

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
        need = prompt_len + max_new_tokens
        capacity = -(-need // capacity_multiple) * capacity_multiple
        caches = model.init_caches(batch, capacity)
        step = compiled_step(model)
    else:
        caches, step = None, model
    pos, step_input, prefill_seconds, stamps, kept = 0, ids, None, [], []
    for _ in range(max_new_tokens):
        if use_cache:
            # mutable: the caches are graph inputs, not constants (else every step recompiles)
            logits, caches = step(ms.Tensor(step_input), ms.mutable(caches), ms.Tensor(np.array([pos], np.int32)))
            pos += step_input.shape[1]
        else:
            logits = step(ms.Tensor(step_input))
        last = logits[:, -1].asnumpy()
        if keep_logits:
            kept.append(last)
        nxt = last.argmax(-1).astype(np.int32)
        if prefill_seconds is None:
            prefill_seconds = time.perf_counter() - start
        stamps.append(time.perf_counter())
        new = np.concatenate([new, nxt[:, None]], axis=1)
        if bar:
            bar.update(1)
        finished |= np.isin(nxt, eos)
        if finished.all():
            break
        step_input = nxt[:, None] if use_cache else np.concatenate([ids, new], axis=1)
    if bar:
        bar.close()
    steady = (len(stamps) - 2) / (stamps[-1] - stamps[1]) if len(stamps) > 2 else None
    out = {"tokens": new, "seconds": time.perf_counter() - start, "prefill_seconds": prefill_seconds,
           "decode_tokens_per_s": steady, "cache_bytes": cache_nbytes(caches) if use_cache else 0}
    if keep_logits:
        out["logits"] = np.stack(kept, axis=1)
    return out
