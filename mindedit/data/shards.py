"""Token shards: the job's text files tokenized once into packed, fixed-length windows on disk.

``prepare(spec, tokenizer, out_dir)`` writes, per split (train / eval):
    <split>.bin      uint32 tokens of every kept file, each file followed by the EOS id, packed end to end
    manifest.json    per split: files (path, sha256, tokens), skipped files with the reason, windows; plus
                     seq_len and the tokenizer's sha256
Both are written atomically (temp file + rename); a second run with the same inputs finds the manifest and
does nothing. Train and eval come from different files: a file listed in both is an error.

``Batches`` reads train windows in a seeded, per-epoch permuted order, sharded by data-parallel rank. Its
position is one integer (global batches consumed), which is all a checkpoint needs to resume exactly.
"""
import glob
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mindedit.errors import MindeditError
from mindedit.utils.files import atomic_write_bytes, atomic_write_json, sha256_file


class DataError(MindeditError):
    pass


@dataclass
class DataSpec:
    """The ``data`` section of a job config, with file patterns already resolved to lists of paths."""
    train: list
    eval: list
    seq_len: int
    source: str = "data"


def expand(patterns, base: Path, where: str) -> list:
    """Glob patterns (relative to ``base``, or ``asset:sotu/...``) -> sorted unique paths; a pattern matching
    nothing is an error."""
    from mindedit.data import assets
    out = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise DataError(f"{where}: {pattern!r}: expected a file path or glob pattern")
        if pattern.startswith("asset:sotu/"):
            full = str(assets.sotu_dir() / pattern[len("asset:sotu/"):])
        else:
            full = pattern if os.path.isabs(pattern) else str(base / pattern)
        hits = sorted(glob.glob(full))
        if not hits:
            raise DataError(f"{where}: {pattern!r} matches no file (looked for {full})")
        out.extend(h for h in hits if h not in out)
    return out


def tokenizer_hash(tokenizer) -> str:
    return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()


def _tokenize_split(paths, tokenizer, eos: int, where: str):
    tokens, files, skipped = [], [], []
    for path in paths:
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            raise DataError(f"{where}: {path}: cannot read ({e.strerror})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            skipped.append({"path": path, "reason": f"not UTF-8 at byte {e.start}"})
            continue
        if not text.strip():
            skipped.append({"path": path, "reason": "empty"})
            continue
        ids = tokenizer.encode(text, add_special_tokens=False).ids + [eos]
        tokens.append(np.asarray(ids, np.uint32))
        files.append({"path": path, "sha256": hashlib.sha256(raw).hexdigest(), "tokens": len(ids)})
    return (np.concatenate(tokens) if tokens else np.zeros(0, np.uint32)), files, skipped


def prepare(spec: DataSpec, tokenizer, eos: int, out_dir, log=print) -> dict:
    """Tokenizes spec.train / spec.eval into out_dir; returns the manifest (reused when inputs are unchanged)."""
    out_dir = Path(out_dir)
    overlap = sorted(set(spec.train) & set(spec.eval))
    if overlap:
        raise DataError(f"{spec.source}: {overlap[0]} is in both data.train and data.eval; held-out text must "
                        f"not be trained on")
    key = {"seq_len": spec.seq_len, "tokenizer_sha256": tokenizer_hash(tokenizer), "eos": eos,
           "inputs": {split: [[p, sha256_file(p)] for p in paths]
                      for split, paths in (("train", spec.train), ("eval", spec.eval))}}
    manifest_path = out_dir / "manifest.json"
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("key") == key and all((out_dir / f"{s}.bin").is_file() for s in ("train", "eval")):
            log(f"data: {manifest_path} is up to date")
            return old
    manifest = {"key": key, "seq_len": spec.seq_len, "tokenizer_sha256": key["tokenizer_sha256"], "eos": eos}
    for split, paths in (("train", spec.train), ("eval", spec.eval)):
        tokens, files, skipped = _tokenize_split(paths, tokenizer, eos, f"{spec.source}: data.{split}")
        for s in skipped:
            log(f"data: skipped {s['path']}: {s['reason']}")
        windows = len(tokens) // spec.seq_len
        if windows == 0:
            raise DataError(f"{spec.source}: data.{split}: {len(tokens)} tokens from {len(files)} usable files "
                            f"({len(skipped)} skipped), fewer than one window of seq_len={spec.seq_len}")
        atomic_write_bytes(out_dir / f"{split}.bin", tokens.tobytes())
        manifest[split] = {"files": files, "skipped": skipped, "tokens": int(len(tokens)), "windows": windows}
        log(f"data: {split}: {len(files)} files, {len(tokens):,} tokens, {windows} windows of {spec.seq_len}"
            + (f", {len(skipped)} skipped" if skipped else ""))
    atomic_write_json(manifest_path, manifest)
    return manifest


def load_tokens(out_dir, split: str) -> np.ndarray:
    return np.memmap(Path(out_dir) / f"{split}.bin", dtype=np.uint32, mode="r")


class Batches:
    """Train batches for one data-parallel rank: rows dp_rank * B / dp .. of the global batch (B = ``batch``), so
    the dp ranks together see exactly the batch a single process sees at the same position.

    Global batch k of epoch e = position // per_epoch uses windows perm_e[k*B : (k+1)*B], where perm_e is a
    permutation seeded by (seed, e): each window once per epoch (the tail that does not fill a batch is dropped
    that epoch)."""

    def __init__(self, out_dir, seq_len: int, batch: int, seed: int, dp_rank: int = 0, dp_size: int = 1,
                 split: str = "train"):
        if batch % dp_size:
            raise DataError(f"batch_size={batch} cannot be split evenly over {dp_size} data-parallel ranks")
        self.tokens = load_tokens(out_dir, split)
        self.seq_len, self.batch, self.seed = seq_len, batch, seed
        self.rank, self.rows = dp_rank, batch // dp_size
        self.windows = len(self.tokens) // seq_len
        self.per_epoch = self.windows // batch
        if self.per_epoch == 0:
            raise DataError(f"{out_dir}: {self.windows} {split} windows of {seq_len} tokens cannot fill one batch of "
                            f"{batch}")
        self._perm_epoch, self._perm = -1, None

    def get(self, position: int) -> np.ndarray:
        epoch, k = divmod(position, self.per_epoch)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.windows)
            self._perm_epoch = epoch
        start = k * self.batch + self.rank * self.rows
        rows = [self.tokens[w * self.seq_len:(w + 1) * self.seq_len] for w in self._perm[start:start + self.rows]]
        return np.stack(rows).astype(np.int32)
