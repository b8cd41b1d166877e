"""Triton-Ascend kernels for what CANN's operator split cannot fuse (issue 13's ``triton`` face).

- attention.py: GateSWA attention (sliding band + sink tokens + sink logit) in one online softmax, forward and
  backward;
- mla_decode.py: MLA's absorbed decode, every head against the one shared latent cache, split over the keys;
- compile_check.py: each kernel compiled toward the 910B as far as the toolchain goes without CANN.

On the CPU the kernels run under ``TRITON_INTERPRET=1`` (tests/test_triton.py checks them against
ascend_ops.reference, forward and backward). How they would reach a MindSpore graph on a 910B, unverified here:
docs/ascend.md.

Tiles for the 910B (per AI core: UB 192 KB, L1 512 KB, L0A/L0B 64 KB, L0C 128 KB; 910B3: 20 cube cores, each with
two vector cores that have a UB of their own; bishengir binds half the rows of a kernel's vector tiles to each).
bf16 inputs, fp32 accumulators. The arithmetic says what should fit; compile_check (bishengir's buffer placement)
is the judge: it passes with these tiles and fails with twice each attention block (forward at 256: UB needs
516 KB, L0C 256 KB; backward at 256: UB 579 / 707 KB) and with four times the MLA decode's (UB 232 KB, L1 648 KB).

gateswa_forward, BLOCK_M = BLOCK_N = 128, head dim 128:
    L0A  q tile 128 x 128 bf16 = 32 KB;  L0B  k^T (then v) tile 128 x 128 bf16 = 32 KB;
    L0C  s = q k^T 128 x 128 fp32 = 64 KB (then p v, 64 KB);
    UB   per vector core (64 rows): s/p 32 KB + acc 32 KB + row max/sum 0.5 KB, ~65 KB, room for double buffers.
    Grid: ceil(T / 128) x B x H programs: 4,096 tokens x 8 local heads = 256 programs, ~13 waves on 20 cores.
gateswa_backward (the dq kernel and the dk/dv kernel), BLOCK_M = BLOCK_N = 128:
    dk/dv: two fp32 accumulators 128 x 128 (128 KB) + p and ds (128 KB): 128 KB per vector core; L0C holds one
    128 x 128 fp32 product (64 KB) at a time.
mla_decode, BLOCK_H = 16 heads, BLOCK_N = 128 keys, latent 512 + rope 64:
    L1   latent tile 128 x 512 bf16 = 128 KB + rope tile 16 KB;  L0A q tile 16 x 576 bf16 = 18 KB;
    L0B  the latent tile in 64 KB slices;  L0C s 16 x 128 fp32 = 8 KB, o 16 x 512 fp32 = 32 KB;
    UB   acc 32 KB + p 8 KB.
    16 heads fill the cube's 16-row fractal (a matrix multiply, not 16 vector products); the cache is split over
    up to 8 programs per (batch, head block) so that a 32K-token decode keeps the 20 cube cores busy.
"""
TILES = {
    "gateswa_forward": dict(BLOCK_M=128, BLOCK_N=128),
    "gateswa_backward": dict(BLOCK_M=128, BLOCK_N=128),
    "mla_decode": dict(BLOCK_H=16, BLOCK_N=128),
}
