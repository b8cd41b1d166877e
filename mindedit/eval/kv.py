"""KV-cache accounting: what the teacher and the student keep per token and per context, as each attention module
counts its own cache (``cache_values``, the same slots its ``init_cache`` allocates). One (zero-initialised)
module is built per distinct kind of layer; no weights are loaded."""
from mindedit.attention.targets import layer_modules


def cache_values(modules, context: int) -> int:
    return sum(m.cache_values(context) for m in modules)


def kv_report(cfg, target, contexts, dtype_bytes: int) -> dict:
    teacher, student = layer_modules(cfg, target)
    rows = []
    for n in contexts:
        t, s = cache_values(teacher, n) * dtype_bytes, cache_values(student, n) * dtype_bytes
        rows.append({"context": n, "teacher_bytes": t, "student_bytes": s, "reduction": 1 - s / t})
    return {
        "teacher_bytes_per_token": cache_values(teacher, 1) * dtype_bytes,
        # per additional token once every bounded (sliding) cache is full
        "student_bytes_per_token": (cache_values(student, 2**31) - cache_values(student, 2**31 - 1)) * dtype_bytes,
        "dtype_bytes": dtype_bytes,
        "contexts": rows,
    }


def format_table(report: dict) -> str:
    lines = [f"{'context':>8} | {'teacher':>12} | {'student':>12} | {'reduction':>9}", "-" * 50]
    for r in report["contexts"]:
        lines.append(f"{r['context']:>8} | {r['teacher_bytes'] / 2**20:>9.1f} MiB | "
                     f"{r['student_bytes'] / 2**20:>9.1f} MiB | {100 * r['reduction']:>8.1f}%")
    return "\n".join(lines)
