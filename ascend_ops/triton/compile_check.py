"""Compiles each Triton-Ascend kernel toward the 910B as far as this machine's toolchain goes.

    python -m ascend_ops.triton.compile_check [--target Ascend910B3] [--tile-scale 1]

Runs triton-ascend's own pipeline (``triton.compile`` with the backend's stages and flags: TTIR, then the bundled
``triton-adapter-opt`` to linalg/HIVM, then ``bishengir-compile`` from ascendnpu-ir, which does the tiling, the
cube/vector split and the placement of every buffer in UB / L1 / L0) with the 910B kernel shapes and tiles of
ascend_ops/triton/__init__.py in bf16. The last step needs CANN's ``hivmc``, which no registry offers: a kernel
*passes* when bishengir-compile gets that far ("External hivmc run fails"), and *fails* when a buffer overflows
UB (192 KB) or L1 (512 KB) ("ub overflow, requires N bits") or the lowering breaks. Prints one line per kernel;
exit status 1 when any fails. ``--tile-scale 2`` doubles every block size (how a too-large tile shows).

One patch: the backend asks CANN for the device's architecture (``NPUUtils().get_arch()`` builds a helper against
the toolkit); here it is told the target instead. Nothing runs on a device and no binary is produced.
"""
import argparse
import importlib.util
import os
import re
import sys
import tempfile
import time

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("compile_check: unset TRITON_INTERPRET (the interpreter replaces the compiler)")

# (kernel module, kernel name, pointer dtypes by argument, constants): the 910B shapes (Qwen3: head_dim 128;
# GateSWA window 1024 + 4 sink tokens + the sink logit; MLA absorbed: kv_lora_rank 512 + rope 64)
GATESWA = dict(D=128, DV=128, DP=128, DVP=128, WINDOW=1024, SINKS=4)


def kernels():
    from ascend_ops.triton import TILES, attention, mla_decode
    bf16, f32, i32 = "*bf16", "*fp32", "i32"
    dims = ["n_keys", "H", "HK", "TQ", "TK"]
    return [
        ("gateswa forward", attention._fwd,
         dict(Q=bf16, K=bf16, V=bf16, SINK=f32, O=f32, LSE=f32, **{d: i32 for d in dims}, scale="fp32"),
         dict(GATESWA, USE_SINK=True, BLOCK_S=16, **TILES["gateswa_forward"])),
        ("gateswa backward dq", attention._dq,
         dict(Q=bf16, K=bf16, V=bf16, DO=bf16, LSE=f32, DELTA=f32, DQ=f32, **{d: i32 for d in dims}, scale="fp32"),
         dict(GATESWA, BLOCK_S=16, **TILES["gateswa_backward"])),
        ("gateswa backward dk dv", attention._dkdv,
         dict(Q=bf16, K=bf16, V=bf16, DO=bf16, LSE=f32, DELTA=f32, DK=f32, DVAL=f32, **{d: i32 for d in dims},
              scale="fp32"),
         dict(GATESWA, **TILES["gateswa_backward"])),
        ("mla latent decode", mla_decode._decode,
         dict(QL=bf16, QR=bf16, C=bf16, R=bf16, O=f32, LSE=f32, n_keys=i32, H=i32, T=i32, scale="fp32",
              keys_per_split=i32),
         dict(DL=512, DR=64, DLP=512, DRP=64, **TILES["mla_decode"])),
    ]


def classify(log: str) -> tuple:
    over = re.findall(r"(\w+ overflow, requires \d+ bits while \d+ bits available)", log)
    if over:
        return False, "; ".join(dict.fromkeys(over))
    if "External hivmc run fails" in log or "Cannot find hivmc" in log:
        return True, "bishengir-compile placed every buffer; stopped where CANN's hivmc is needed"
    lines = [ln.strip() for ln in log.splitlines() if "error" in ln.lower()]
    return False, "lowering failed: " + (lines[-1] if lines else log.strip()[-300:])[:300]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m ascend_ops.triton.compile_check", description=__doc__.split("\n")[0])
    ap.add_argument("--target", default="Ascend910B3", help="bishengir --target (default Ascend910B3)")
    ap.add_argument("--tile-scale", type=int, default=1, help="multiply every BLOCK_* size (default 1)")
    args = ap.parse_args(argv)
    ir_bin = os.path.join(os.path.dirname(importlib.util.find_spec("ascendnpuir").origin), "bin")
    os.environ["PATH"] = ir_bin + os.pathsep + os.environ.get("PATH", "")  # bishengir-compile
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="mindedit-triton-"))
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"
    import triton
    from triton.backends import backends
    from triton.backends.compiler import GPUTarget

    class Arch:  # the one patch: the architecture CANN would report
        def get_arch(self):
            return args.target

    backends["ascend"].compiler.add_stages.__globals__["NPUUtils"] = Arch
    target = GPUTarget("npu", args.target, 0)
    failed = 0
    for name, fn, signature, constants in kernels():
        constants = {k: v * args.tile_scale if k.startswith("BLOCK_") and k != "BLOCK_S" else v
                     for k, v in constants.items()}
        sig = dict(signature, **{k: "constexpr" for k in constants})
        tiles = " ".join(f"{k}={v}" for k, v in constants.items() if k.startswith("BLOCK_"))
        t = time.perf_counter()
        try:
            triton.compile(triton.compiler.ASTSource(fn, signature=sig, constants=constants), target=target)
            ok, detail = True, "compiled to a binary"
        except Exception as e:  # the pipeline reports through MLIRCompilationError / CalledProcessError
            ok, detail = classify(str(e) + str(getattr(e, "stderr", "") or ""))
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name:<24} {tiles:<34} {time.perf_counter() - t:5.2f}s  {detail}",
              flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
