// MLA's weight absorption for the MindSpore CPU backend (ops.Custom func_type="aot"): the two products around the
// absorbed (latent) attention, reading kv_b_proj's weight where it lies.
//
// Why it exists: in plain ops each decode step sliced the weight into its key and value halves, transposed one,
// split the queries, ran two batched matmuls and concatenated: ten small kernels per layer per token, most of a
// step's time on this backend being between kernels (docs/environment.md).
//
// Contract (ascend_ops/reference.py: absorb_query_reference, absorb_output_reference are the oracles):
//   w [H * (N + V), R] float32: kv_b_proj.weight, head h's rows h * (N + V) .. + N its key part W_uk[h] [N, R], the
//   next V rows its value part W_uv[h] [V, R]; meta [2] int32: {N, V}.
//   AbsorbQuery:  q [B, H, T, N + P] -> y [B, H, T, R + P]: y[..., :R] = q[..., :N] W_uk[h], y[..., R:] = q[..., N:]
//   AbsorbOutput: o [B, H, T, R] -> y [B, H, T, V]: y = o W_uv[h]^T
// Forward only: absorption is decoding (inference); training runs the naive form.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "simd.h"

namespace {

// y[b, h, t, :] = sum over k < K of x[b, h, t, k] M_h[k, :], M_h [K, C] row-major at m + h * ldh
void per_head_product(const float* x, int64_t B, int64_t H, int64_t T, int64_t ldx, int64_t K, const float* m,
                      int64_t ldh, int64_t C, float* y, int64_t ldy) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t t = 0; t < T; ++t) {
      const float* xr = x + (bh * T + t) * ldx;
      float* yr = y + (bh * T + t) * ldy;
      const float* mh = m + (bh % H) * ldh;
      std::fill(yr, yr + C, 0.f);
      for (int64_t k = 0; k < K; ++k) axpy(xr[k], mh + k * C, yr, C);
    }
}

}  // namespace

extern "C" {

// params: q, w, meta | y
int AbsorbQuery(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void* stream,
                void* extra) {
  if (nparam != 4 || ndims[0] != 4 || ndims[1] != 2) return 1;
  const int32_t* meta = static_cast<const int32_t*>(params[2]);
  const int64_t B = shapes[0][0], H = shapes[0][1], T = shapes[0][2], D = shapes[0][3];
  const int64_t N = meta[0], V = meta[1], R = shapes[1][1], P = D - N;
  if (P < 0 || shapes[1][0] != H * (N + V)) return 2;
  const float* q = static_cast<const float*>(params[0]);
  float* y = static_cast<float*>(params[3]);
  per_head_product(q, B, H, T, D, N, static_cast<const float*>(params[1]), (N + V) * R, R, y, R + P);
  for (int64_t row = 0; row < B * H * T; ++row)                     // the rotary channels pass through
    std::memcpy(y + row * (R + P) + R, q + row * D + N, sizeof(float) * P);
  return 0;
}

// params: o, w, meta | y
int AbsorbOutput(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void* stream,
                 void* extra) {
  if (nparam != 4 || ndims[0] != 4 || ndims[1] != 2) return 1;
  const int32_t* meta = static_cast<const int32_t*>(params[2]);
  const int64_t B = shapes[0][0], H = shapes[0][1], T = shapes[0][2], R = shapes[0][3];
  const int64_t N = meta[0], V = meta[1];
  if (shapes[1][0] != H * (N + V) || shapes[1][1] != R) return 2;
  const float* o = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  float* y = static_cast<float*>(params[3]);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t t = 0; t < T; ++t) {                               // one dot product per value channel: W_uv[h]'s
      const float* orow = o + (bh * T + t) * R;                     // rows are contiguous, no transposed copy
      const float* wv = w + ((bh % H) * (N + V) + N) * R;
      for (int64_t j = 0; j < V; ++j) y[(bh * T + t) * V + j] = dot(orow, wv + j * R, R);
    }
  return 0;
}

}  // extern "C"
