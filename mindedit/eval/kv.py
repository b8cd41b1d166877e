"""KV-cache accounting from shapes: what the teacher and the student keep per token and per context."""
from mindedit.edit.config import GateSWAConfig, MLAConfig


def teacher_values(cfg, context: int) -> int:
    """Cached values (not bytes) of a GQA teacher holding ``context`` tokens."""
    return context * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim


def student_values(cfg, target, context: int) -> int:
    if isinstance(target, MLAConfig):
        return context * cfg.num_hidden_layers * (target.kv_lora_rank + target.qk_rope_head_dim)
    assert isinstance(target, GateSWAConfig)
    per_token = 2 * cfg.num_key_value_heads * cfg.head_dim
    full = target.num_full()
    ring = min(context, target.sink_tokens + target.window)
    return per_token * (full * context + (cfg.num_hidden_layers - full) * ring)


def kv_report(cfg, target, contexts, dtype_bytes: int) -> dict:
    rows = []
    for n in contexts:
        t, s = teacher_values(cfg, n) * dtype_bytes, student_values(cfg, target, n) * dtype_bytes
        rows.append({"context": n, "teacher_bytes": t, "student_bytes": s, "reduction": 1 - s / t})
    return {
        "teacher_bytes_per_token": teacher_values(cfg, 1) * dtype_bytes,
        # per additional token once every bounded (sliding) cache is full
        "student_bytes_per_token": (student_values(cfg, target, 2**31) - student_values(cfg, target, 2**31 - 1))
        * dtype_bytes,
        "dtype_bytes": dtype_bytes,
        "contexts": rows,
    }


def format_table(report: dict) -> str:
    lines = [f"{'context':>8} | {'teacher':>12} | {'student':>12} | {'reduction':>9}", "-" * 50]
    for r in report["contexts"]:
        lines.append(f"{r['context']:>8} | {r['teacher_bytes'] / 2**20:>9.1f} MiB | "
                     f"{r['student_bytes'] / 2**20:>9.1f} MiB | {100 * r['reduction']:>8.1f}%")
    return "\n".join(lines)
