"""Token shards: deterministic, held-out by file, bad files counted or refused, DP-sharded, resumable by position."""
import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from mindedit.data.shards import Batches, DataError, DataSpec, expand, prepare


@pytest.fixture
def tokenizer():
    vocab = {c: i for i, c in enumerate(["<eos>"] + list(" abcdefghijklmnopqrstuvwxyz."))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return tok


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "text"
    d.mkdir()
    rng = np.random.default_rng(0)  # random letters: every window of the corpus is distinct
    for i in range(6):
        (d / f"doc{i}.txt").write_text("".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz. "), 900)))
    return d


def spec(corpus, seq_len=16, train="doc[0-4].txt", ev="doc5.txt"):
    return DataSpec(expand([train], corpus, "t"), expand([ev], corpus, "e"), seq_len, "job.yaml")


def test_prepare_is_deterministic_and_reused(tokenizer, corpus, tmp_path):
    messages = []
    m1 = prepare(spec(corpus), tokenizer, 0, tmp_path / "a", messages.append)
    m2 = prepare(spec(corpus), tokenizer, 0, tmp_path / "b", messages.append)
    assert (tmp_path / "a/train.bin").read_bytes() == (tmp_path / "b/train.bin").read_bytes()
    assert m1["train"]["tokens"] == sum(f["tokens"] for f in m1["train"]["files"]) == len(
        np.fromfile(tmp_path / "a/train.bin", np.uint32))
    assert m1["train"]["windows"] == m1["train"]["tokens"] // 16 and len(m1["eval"]["files"]) == 1
    assert [f["path"].rsplit("/", 1)[1] for f in m1["train"]["files"]] == [f"doc{i}.txt" for i in range(5)]
    mtime = (tmp_path / "a/train.bin").stat().st_mtime_ns
    prepare(spec(corpus), tokenizer, 0, tmp_path / "a", messages.append)
    assert (tmp_path / "a/train.bin").stat().st_mtime_ns == mtime and "up to date" in messages[-1]
    (corpus / "doc0.txt").write_text("changed text. " * 30)  # a changed input is re-tokenized
    m3 = prepare(spec(corpus), tokenizer, 0, tmp_path / "a", messages.append)
    assert m3["train"]["files"][0]["sha256"] != m1["train"]["files"][0]["sha256"]


def test_bad_files_are_counted_or_refused(tokenizer, corpus, tmp_path):
    (corpus / "doc3.txt").write_bytes(b"caf\xe9 latin-1 text")
    (corpus / "doc4.txt").write_text("  \n")
    messages = []
    m = prepare(spec(corpus), tokenizer, 0, tmp_path / "out", messages.append)
    reasons = {s["path"].rsplit("/", 1)[1]: s["reason"] for s in m["train"]["skipped"]}
    assert reasons == {"doc3.txt": "not UTF-8 at byte 3", "doc4.txt": "empty"}
    assert any("skipped" in msg and "doc3.txt" in msg for msg in messages)
    assert json.loads((tmp_path / "out/manifest.json").read_text())["train"]["skipped"] == m["train"]["skipped"]
    for i in range(3):
        (corpus / f"doc{i}.txt").write_text("")
    with pytest.raises(DataError, match=r"data.train: 0 tokens from 0 usable files \(5 skipped\)"):
        prepare(spec(corpus), tokenizer, 0, tmp_path / "out2", print)
    with pytest.raises(DataError, match="doc5.txt is in both data.train and data.eval"):
        prepare(spec(corpus, train="doc*.txt"), tokenizer, 0, tmp_path / "out3", print)
    with pytest.raises(DataError, match="'nothing\\*.txt' matches no file"):
        expand(["nothing*.txt"], corpus, "job.yaml: data.train")


def test_batches_shard_by_rank_and_resume_by_position(tokenizer, corpus, tmp_path):
    prepare(spec(corpus, seq_len=8), tokenizer, 0, tmp_path, print)
    tokens = np.fromfile(tmp_path / "train.bin", np.uint32)
    ranks = [Batches(tmp_path, 8, 4, seed=7, dp_rank=r, dp_size=2) for r in range(2)]
    single = Batches(tmp_path, 8, 4, seed=7)
    per_epoch = ranks[0].per_epoch
    seen = []
    for pos in range(per_epoch):
        a, b = ranks[0].get(pos), ranks[1].get(pos)
        assert a.shape == (2, 8) and a.dtype == np.int32
        np.testing.assert_array_equal(np.concatenate([a, b]), single.get(pos))  # dp splits the global batch
        seen += [tuple(r) for r in np.concatenate([a, b])]
    windows = {tuple(tokens[i * 8:(i + 1) * 8].astype(np.int32)) for i in range(len(tokens) // 8)}
    assert len(set(seen)) == len(seen) and set(seen) <= windows  # disjoint across ranks, each once per epoch
    fresh = Batches(tmp_path, 8, 4, seed=7, dp_rank=1, dp_size=2)  # a resumed reader: same batch at a position
    np.testing.assert_array_equal(fresh.get(per_epoch + 3), ranks[1].get(per_epoch + 3))
    assert not np.array_equal(ranks[0].get(0), ranks[0].get(per_epoch))  # a new order each epoch
    assert not np.array_equal(Batches(tmp_path, 8, 2, seed=8).get(0), Batches(tmp_path, 8, 2, seed=7).get(0))
    with pytest.raises(DataError, match="batch_size=3 cannot be split evenly over 2"):
        Batches(tmp_path, 8, 3, seed=7, dp_rank=0, dp_size=2)
