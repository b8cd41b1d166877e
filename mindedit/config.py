"""Job configuration: one YAML file per job, read with ``yaml.safe_load`` and validated on load.

Every error names the file and the key. Sections so far:
    name: run name (runs/<name>/)
    model: {path: HF dir | .gguf | asset:NAME} or {config: {HF config.json body}}  (+ dtype)
    target: {kind: mla | gateswa, ...}   (mindedit.edit.config)
    kv_dtype: float32 | bfloat16 | float16   (what the KV report counts; bf16 on 910B)
    eval: {contexts: [...]}
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from mindedit.edit.config import TargetError, target_from_dict

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ASSETS = {"smollm2-135m": "smollm2_gguf"}
SECTIONS = {"name", "model", "target", "kv_dtype", "eval"}


class JobConfigError(ValueError):
    pass


@dataclass
class JobConfig:
    name: str
    source: str
    model_path: Optional[str] = None
    model_config: Optional[dict] = None
    dtype: str = "float32"
    target: object = None
    kv_dtype: str = "float32"
    contexts: list = field(default_factory=lambda: [4096, 32768])

    @property
    def kv_dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.kv_dtype]

    def resolve_model_path(self) -> Path:
        if self.model_path is None:
            raise JobConfigError(f"{self.source}: model.path is needed here (this config only describes shapes)")
        if self.model_path.startswith("asset:"):
            from mindedit.data import assets
            name = self.model_path[len("asset:"):]
            if name not in ASSETS:
                raise JobConfigError(f"{self.source}: model.path={self.model_path!r}: known assets are "
                                     f"{sorted(ASSETS)}")
            return getattr(assets, ASSETS[name])()
        p = Path(self.model_path)
        return p if p.is_absolute() else (Path(self.source).parent / p)

    def model_shapes(self):
        """The source ModelConfig, from the inline config or from the model file's metadata."""
        from mindedit.models import ModelConfig, load_config
        if self.model_config is not None:
            return ModelConfig.from_hf_dict(self.model_config, source=f"{self.source}: model.config")
        return load_config(self.resolve_model_path())


def load_job_config(path) -> JobConfig:
    path = Path(path)
    if not path.is_file():
        raise JobConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise JobConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise JobConfigError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(raw) - SECTIONS)
    if unknown:
        raise JobConfigError(f"{path}: unknown section {unknown[0]!r}; expected some of {sorted(SECTIONS)}")
    src = str(path)
    model = raw.get("model")
    if not isinstance(model, dict) or not ({"path", "config"} & set(model)):
        raise JobConfigError(f"{path}: model: expected a mapping with 'path' (HF dir, .gguf, asset:NAME) or "
                             f"'config' (an HF config.json body)")
    bad = sorted(set(model) - {"path", "config", "dtype"})
    if bad:
        raise JobConfigError(f"{path}: model.{bad[0]}: unknown key; expected path, config, dtype")
    cfg = JobConfig(name=str(raw.get("name") or path.stem), source=src, model_path=model.get("path"),
                    model_config=model.get("config"), dtype=model.get("dtype", "float32"),
                    kv_dtype=raw.get("kv_dtype", "float32"))
    for key, value in (("model.dtype", cfg.dtype), ("kv_dtype", cfg.kv_dtype)):
        if value not in DTYPE_BYTES:
            raise JobConfigError(f"{path}: {key}={value!r}: expected one of {sorted(DTYPE_BYTES)}")
    if "target" not in raw or not isinstance(raw["target"], dict):
        raise JobConfigError(f"{path}: target: expected a mapping with kind: mla | gateswa")
    try:
        cfg.target = target_from_dict(raw["target"], where=f"{path}: target")
        cfg.target.resolve(cfg.model_shapes(), where=f"{path}: target")
    except TargetError as e:
        raise JobConfigError(str(e)) from None
    contexts = (raw.get("eval") or {}).get("contexts", cfg.contexts)
    if not isinstance(contexts, list) or not all(isinstance(c, int) and c > 0 for c in contexts):
        raise JobConfigError(f"{path}: eval.contexts={contexts!r}: expected a list of positive token counts")
    cfg.contexts = contexts
    return cfg
