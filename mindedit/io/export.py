"""``save_pretrained``: a model as an HF-style directory (config.json + model.safetensors + tokenizer.json),
written into a temp directory and renamed into place. A converted model's config carries its
``attention_target`` (and the DeepSeek-V2/V3 MLA fields or the GateSWA layer types), so
``mindedit.models.from_pretrained`` rebuilds the same modules and loads the same weights."""
import json
from pathlib import Path

import numpy as np
import mindspore as ms
from safetensors.numpy import save_file

from mindedit.utils.files import atomic_dir


def save_pretrained(model, out_dir, tokenizer=None) -> Path:
    """Weights are written as float32 whatever the model's dtype (numpy has no bfloat16)."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        cfg = model.config.to_hf_dict()
        cfg["torch_dtype"] = "float32"
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        tensors = {}
        for name, p in model.parameters_and_names():
            if name == "lm_head.weight" and model.config.tie_word_embeddings:
                continue
            tensors[name] = np.ascontiguousarray(p.value().astype(ms.float32).asnumpy())
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(str(tmp / "tokenizer.json"))
    return out_dir
