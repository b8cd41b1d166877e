"""Job configuration: one YAML file per job, read with ``yaml.safe_load`` and validated on load.

Every error names the file and the key. Sections so far:
    name: run name (runs/<name>/)
    model: {path: HF dir | .gguf | asset:NAME} or {config: {HF config.json body}}  (+ dtype)
    target: {kind: mla | gateswa, ...}   (mindedit.edit.config)
    kv_dtype: float32 | bfloat16 | float16   (what the KV report counts; bf16 on 910B)
    data: {train: [globs], eval: [globs], seq_len}      text files (relative to the config, or asset:sotu/...)
    train: {seed, batch_size, grad_accum, checkpoint_every, stage1: {...}, stage2: {...}}   (a stage may set its
           own seq_len: stage 2 of a GateSWA job wants contexts well beyond the window)
    eval: {contexts: [...], seq_len, max_windows, decode_tokens, tasks: [...], task_limit, needle_contexts: [...],
           needle_depths: [...], curve_points, curve_windows}
    parallel: {dp, tp, pp, ep, micro_batches, schedule}   (mindedit.parallel; world size = dp * tp * pp)
    cluster: {launcher, master, nodes, ssh, env, cluster_time_out}   (cluster/config.py; default: this machine)
Any key can be overridden from the command line (``--set parallel.tp=2``, ``--set train.stage1.steps=5``; the
``train.`` of a stage may be left out: ``--set stage1.steps=5``); values are parsed as YAML scalars.
The keys of data, train and eval, their types and defaults are in SCHEMAS below.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from mindedit.edit.config import target_from_dict
from mindedit.errors import MindeditError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ASSETS = {"smollm2-135m": "smollm2_gguf", "qwen2.5-coder-0.5b": "qwen25_coder_gguf", "tiny-qwen3": "tiny_qwen3",
          "tiny-qwen3-moe": "tiny_qwen3_moe"}
SECTIONS = {"name", "model", "target", "kv_dtype", "data", "train", "eval", "parallel", "cluster"}

# key: (type, default); a default of REQUIRED must be given. Numbers must be >= 0 unless noted in _check.
REQUIRED = object()
STAGE = {"tokens": (int, 0), "steps": (int, 0), "seq_len": (int, 0), "lr": (float, 1e-4), "warmup_steps": (int, 0),
         "schedule": (str, "cosine"), "min_lr_ratio": (float, 0.1), "clip": (float, 1.0),
         "weight_decay": (float, 0.0), "beta1": (float, 0.9), "beta2": (float, 0.95),
         "row_relative": (bool, False), "lr_relative": (bool, False)}
SCHEMAS = {
    "data": {"train": (list, REQUIRED), "eval": (list, REQUIRED), "seq_len": (int, 512)},
    "train": {"seed": (int, 0), "batch_size": (int, 1), "grad_accum": (int, 1), "checkpoint_every": (int, 50),
              "stage1": (dict, {}), "stage2": (dict, {})},
    "train.stage1": dict(STAGE),
    "train.stage2": dict(STAGE, kl=(str, "forward"), temperature=(float, 1.0), feature_weight=(float, 0.0),
                         feature_layers=(list, []), ce_weight=(float, 0.0), trainable=(str, "attention")),
    "eval": {"contexts": (list, [4096, 32768]), "seq_len": (int, 1024), "max_windows": (int, 8),
             "decode_tokens": (int, 32), "tasks": (list, ["arc_easy", "arc_challenge", "hellaswag", "mmlu"]),
             "task_limit": (int, 100), "needle_contexts": (list, [2048, 4096, 8192]),
             "needle_depths": (list, [0.1, 0.5, 0.9]), "curve_points": (int, 0), "curve_windows": (int, 1)},
    "parallel": {"dp": (int, 1), "tp": (int, 1), "pp": (int, 1), "ep": (int, 1), "micro_batches": (int, 1),
                 "schedule": (str, "gpipe")},
}
CHOICES = {"schedule": ("cosine", "linear", "constant"),
           "train.stage2.kl": ("forward", "reverse", "both"),
           "train.stage2.trainable": ("attention", "attention+norms", "all"),
           "parallel.schedule": ("gpipe",)}  # 1F1B needs paired send/recv, which the CPU backend lacks: not built


def section(raw, name: str, where: str) -> dict:
    """Validates one mapping against SCHEMAS[name]: unknown keys, types, choices; fills defaults."""
    schema = SCHEMAS[name]
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise JobConfigError(f"{where}: {name}: expected a mapping with keys {sorted(schema)}")
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        raise JobConfigError(f"{where}: {name}.{unknown[0]}: unknown key; expected some of {sorted(schema)}")
    out = {}
    for key, (kind, default) in schema.items():
        full = f"{name}.{key}"
        if key not in raw:
            if default is REQUIRED:
                raise JobConfigError(f"{where}: {full}: required")
            out[key] = default
            continue
        value = raw[key]
        ok = isinstance(value, bool) if kind is bool else (
            isinstance(value, kind) and not isinstance(value, bool)
            or (kind is float and isinstance(value, int) and not isinstance(value, bool)))
        if not ok:
            raise JobConfigError(f"{where}: {full}={value!r}: expected {kind.__name__}")
        if kind in (int, float) and value < 0:
            raise JobConfigError(f"{where}: {full}={value!r}: expected a non-negative number")
        choices = CHOICES.get(full) or CHOICES.get(key)
        if choices and value not in choices:
            raise JobConfigError(f"{where}: {full}={value!r}: expected one of {choices}")
        out[key] = float(value) if kind is float else value
    return out


class JobConfigError(MindeditError):
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
    data: Optional[dict] = None
    train: dict = field(default_factory=lambda: section({}, "train", "defaults"))
    eval: dict = field(default_factory=lambda: section({}, "eval", "defaults"))
    parallel: dict = field(default_factory=lambda: section({}, "parallel", "defaults"))
    raw: dict = field(default_factory=dict)  # the YAML document after --set overrides (saved in the run directory)
    overrides: list = field(default_factory=list)  # the --set items (passed on to the workers of a sharded run)
    cluster: object = None  # cluster.config.Cluster: where the ranks run

    @property
    def dims(self):
        from mindedit.parallel import ParallelDims
        p = self.parallel
        return ParallelDims(p["dp"], p["tp"], p["pp"], p["ep"])

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


def apply_overrides(raw: dict, overrides, where: str) -> dict:
    """``key.path=value`` strings set into the YAML document (a copy); values are YAML scalars or flow
    collections (``--set parallel.tp=2``, ``--set data.train=[a.txt]``)."""
    import copy
    raw = copy.deepcopy(raw)
    for item in overrides or ():
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise JobConfigError(f"{where}: --set {item!r}: expected KEY.PATH=VALUE")
        if parts[0] in ("stage1", "stage2"):
            parts = ["train"] + parts
        if parts[0] not in SECTIONS:
            raise JobConfigError(f"{where}: --set {item!r}: unknown section {parts[0]!r}; expected one of "
                                 f"{sorted(SECTIONS)}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise JobConfigError(f"{where}: --set {item!r}: the value is not valid YAML ({e})") from None
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise JobConfigError(f"{where}: --set {item!r}: {'.'.join(parts[:i + 1])} is not a mapping")
            node = child
        node[parts[-1]] = value
    return raw


def load_job_config(path, overrides=()) -> JobConfig:
    path = Path(path)
    if not path.is_file():
        raise JobConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise JobConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise JobConfigError(f"{path}: expected a mapping at the top level")
    raw = apply_overrides(raw, overrides, str(path))
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
    cfg.target = target_from_dict(raw["target"], where=f"{path}: target")
    cfg.target.resolve(cfg.model_shapes(), where=f"{path}: target")
    cfg.eval = section(raw.get("eval"), "eval", src)
    contexts = cfg.eval["contexts"]
    if not all(isinstance(c, int) and c > 0 for c in contexts):
        raise JobConfigError(f"{path}: eval.contexts={contexts!r}: expected a list of positive token counts")
    cfg.contexts = contexts
    needle = cfg.eval["needle_contexts"]
    if not all(isinstance(c, int) and c > 0 for c in needle):
        raise JobConfigError(f"{path}: eval.needle_contexts={needle!r}: expected a list of positive token counts")
    depths = cfg.eval["needle_depths"]
    if not all(isinstance(d, (int, float)) and 0 <= d <= 1 for d in depths):
        raise JobConfigError(f"{path}: eval.needle_depths={depths!r}: expected a list of depths between 0 and 1")
    for key in ("curve_points", "curve_windows"):
        if cfg.eval[key] < 0:
            raise JobConfigError(f"{path}: eval.{key}={cfg.eval[key]}: expected 0 or more")
    from mindedit.eval.tasks import TASKS
    bad = [t for t in cfg.eval["tasks"] if t not in TASKS]
    if bad:
        raise JobConfigError(f"{path}: eval.tasks: unknown task {bad[0]!r}; expected some of {list(TASKS)}")
    if "data" in raw:
        cfg.data = section(raw["data"], "data", src)
        if cfg.data["seq_len"] < 2:
            raise JobConfigError(f"{path}: data.seq_len={cfg.data['seq_len']}: expected at least 2")
    train = section(raw.get("train"), "train", src)
    for stage in ("stage1", "stage2"):
        spec = train[stage] = section(train[stage], f"train.{stage}", src)
        if spec["tokens"] and spec["steps"]:
            raise JobConfigError(f"{path}: train.{stage}: give tokens or steps, not both")
        # a stage's training windows: its own seq_len, else data.seq_len
        spec["seq_len"] = spec["seq_len"] or (cfg.data or {}).get("seq_len", 0)
        if cfg.data and spec["seq_len"] < 2:
            raise JobConfigError(f"{path}: train.{stage}.seq_len={spec['seq_len']}: expected at least 2")
    for key in ("batch_size", "grad_accum", "checkpoint_every"):
        if train[key] < 1:
            raise JobConfigError(f"{path}: train.{key}={train[key]}: expected at least 1")
    layers = cfg.model_shapes().num_hidden_layers
    bad = [i for i in train["stage2"]["feature_layers"] if not isinstance(i, int) or not 0 <= i < layers]
    if bad:
        raise JobConfigError(f"{path}: train.stage2.feature_layers: {bad[0]!r} is not a layer index 0..{layers - 1}")
    cfg.train = train
    cfg.parallel = section(raw.get("parallel"), "parallel", src)
    for key in ("dp", "tp", "pp", "ep", "micro_batches"):
        if cfg.parallel[key] < 1:
            raise JobConfigError(f"{path}: parallel.{key}={cfg.parallel[key]}: expected at least 1")
    cfg.dims.validate(cfg.model_shapes(), where=f"{path}: parallel")
    dp = cfg.parallel["dp"]
    if train["batch_size"] % dp:
        raise JobConfigError(f"{path}: train.batch_size={train['batch_size']}: the global batch must divide evenly "
                             f"over parallel.dp={dp} data-parallel ranks")
    mb = cfg.parallel["micro_batches"]
    if cfg.parallel["pp"] > 1 and (train["batch_size"] // dp) % mb:
        raise JobConfigError(f"{path}: parallel.micro_batches={mb}: must divide the {train['batch_size'] // dp} "
                             f"sequences of a data-parallel rank's batch (train.batch_size / parallel.dp)")
    if cfg.parallel["ep"] > 1 and any(train["batch_size"] // dp * train[s]["seq_len"] % cfg.parallel["tp"]
                                      for s in ("stage1", "stage2")):
        raise JobConfigError(f"{path}: parallel.ep={cfg.parallel['ep']}: the tokens of a rank's batch "
                             f"(batch_size / dp x seq_len) must divide over parallel.tp={cfg.parallel['tp']}")
    if cfg.parallel["tp"] > 1 and any(train[s]["row_relative"] for s in ("stage1", "stage2")):
        raise JobConfigError(f"{path}: train.stage1/2.row_relative: not with parallel.tp={cfg.parallel['tp']} (a "
                             f"row's and a matrix's RMS would be one rank's shard's; set row_relative: false)")
    from cluster.config import ClusterError, parse_cluster
    try:
        cfg.cluster = parse_cluster(raw.get("cluster"), cfg.dims.world, str(path))
    except ClusterError as e:  # cluster/ is a leaf with its own errors
        raise JobConfigError(str(e)) from None
    cfg.raw, cfg.overrides = raw, list(overrides or ())
    return cfg


def stage_steps(cfg: JobConfig, stage: str) -> int:
    """A stage's optimizer steps: its ``steps``, or its ``tokens`` budget over tokens per step (the global batch
    times grad_accum times seq_len; rounded up)."""
    spec, t = cfg.train[stage], cfg.train
    if spec["steps"]:
        return spec["steps"]
    per_step = t["batch_size"] * t["grad_accum"] * spec["seq_len"]
    return -(-spec["tokens"] // per_step)
