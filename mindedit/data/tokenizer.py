"""``load_tokenizer``: a ``tokenizers.Tokenizer`` from tokenizer.json, an HF model directory, or a GGUF's
embedded vocabulary (rebuilt as the same byte-level BPE llama.cpp uses)."""
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from mindedit.errors import MindeditError

# Qwen2/Qwen3's pre-tokenizer split (the same as in their tokenizer.json).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


def _pre_tokenizer(pre: str, source: Path):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in ("qwen2", "qwen3"):
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if pre in ("default", "gpt2"):
        return byte_level
    raise MindeditError(f"{source}: tokenizer.ggml.pre={pre!r} is not supported; expected smollm, qwen2 or gpt2")


def _from_gguf(path: Path) -> Tokenizer:
    from mindedit.io.gguf import tokenizer_spec
    spec = tokenizer_spec(path)
    vocab = {tok: i for i, tok in enumerate(spec["tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in spec["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(spec["pre"], path)
    tok.decoder = decoders.ByteLevel()
    # Control tokens (type 3, e.g. <|im_start|>) are matched whole, never split into bytes.
    special = [t for t, kind in zip(spec["tokens"], spec["token_type"]) if kind == 3]
    tok.add_special_tokens(special)
    return tok


def load_tokenizer(path) -> Tokenizer:
    """From a tokenizer.json file, a directory containing one, or a .gguf file."""
    path = Path(path)
    if path.suffix == ".gguf":
        return _from_gguf(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no tokenizer.json (expected a tokenizer.json, a model directory "
                                f"containing one, or a .gguf file)")
    return Tokenizer.from_file(str(file))
