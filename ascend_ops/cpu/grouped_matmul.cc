// Grouped matmul for the sparse MoE on the MindSpore CPU backend, loaded by ops.Custom(func_type="aot"): the CPU
// twin of CANN's grouped_matmul over tokens permuted by expert.
//
//   x [N, In] float32      rows sorted by expert: rows offsets[e] .. offsets[e+1]-1 belong to expert e
//   w [E, Out, In] float32 the experts' weights in HF layout (a Linear's weight [out, in])
//   offsets [E+1] int32    offsets[0] = 0, offsets[E] <= N, non-decreasing
//   y [N, Out]             y[r] = w[e(r)] @ x[r]; rows from offsets[E] on belong to no expert: y[r] = 0
//                          (expert parallelism: only the local experts' rows, sorted first, are computed)
// Backward: dx [N, In] = dy[r] @ w[e(r)] (0 past offsets[E]),  dw [E, Out, In] = sum over e's rows of dy[r]^T x[r].
// Each expert's FLOPs are its own rows' only: T x top_k rows in all, instead of T x num_experts.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "simd.h"

namespace {

// y[r][o] = dot(x[r], w[o]) for a block of up to 4 rows and 4 outputs, vectorised along In.
void dot_block(const float* x, int64_t rows, const float* w, int64_t outs, int64_t in, float* y, int64_t ldy) {
  vf acc[4][4];
  for (auto& a : acc)
    for (auto& b : a) b = vset(0.f);
  int64_t i = 0;
  for (; i + kLanes <= in; i += kLanes) {
    vf xv[4], wv[4];
    for (int64_t r = 0; r < rows; ++r) xv[r] = vload(x + r * in + i);
    for (int64_t o = 0; o < outs; ++o) wv[o] = vload(w + o * in + i);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = 0; o < outs; ++o) acc[r][o] += xv[r] * wv[o];
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < outs; ++o) {
      float s = hsum(acc[r][o]);
      for (int64_t t = i; t < in; ++t) s += x[r * in + t] * w[o * in + t];
      y[r * ldy + o] = s;
    }
}

struct Dims {
  int64_t n, in, e, out;
};

Dims dims(int64_t** shapes) { return {shapes[0][0], shapes[0][1], shapes[1][0], shapes[1][1]}; }

int64_t expert_of(const int32_t* offsets, int64_t e, int64_t row) {
  return std::upper_bound(offsets, offsets + e + 1, static_cast<int32_t>(row)) - offsets - 1;
}

}  // namespace

extern "C" {

// params: x, w, offsets | y
int GroupedMatmulForward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void* stream,
                         void* extra) {
  if (nparam != 4) return 1;
  const Dims d = dims(shapes);
  const auto* x = static_cast<const float*>(params[0]);
  const auto* w = static_cast<const float*>(params[1]);
  const auto* off = static_cast<const int32_t*>(params[2]);
  auto* y = static_cast<float*>(params[3]);
  // tasks: blocks of 4 rows; a block never straddles two experts (blocks restart at each expert's first row)
  std::vector<std::pair<int64_t, int64_t>> blocks;  // (first row, expert)
  for (int64_t e = 0; e < d.e; ++e)
    for (int64_t r = off[e]; r < off[e + 1]; r += 4) blocks.emplace_back(r, e);
  std::memset(y + off[d.e] * d.out, 0, sizeof(float) * (d.n - off[d.e]) * d.out);
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t b = 0; b < static_cast<int64_t>(blocks.size()); ++b) {
    const int64_t r0 = blocks[b].first, e = blocks[b].second;
    const int64_t rows = std::min<int64_t>(4, off[e + 1] - r0);
    const float* we = w + e * d.out * d.in;
    for (int64_t o = 0; o < d.out; o += 4)
      dot_block(x + r0 * d.in, rows, we + o * d.in, std::min<int64_t>(4, d.out - o), d.in, y + r0 * d.out + o,
                d.out);
  }
  return 0;
}

// params: x, w, offsets, dy | dx, dw
int GroupedMatmulBackward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void* stream,
                          void* extra) {
  if (nparam != 6) return 1;
  const Dims d = dims(shapes);
  const auto* x = static_cast<const float*>(params[0]);
  const auto* w = static_cast<const float*>(params[1]);
  const auto* off = static_cast<const int32_t*>(params[2]);
  const auto* dy = static_cast<const float*>(params[3]);
  auto* dx = static_cast<float*>(params[4]);
  auto* dw = static_cast<float*>(params[5]);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < d.n; ++r) {  // dx[r] = sum_o dy[r][o] w[e][o]
    float* out = dx + r * d.in;
    std::memset(out, 0, sizeof(float) * d.in);
    if (r >= off[d.e]) continue;
    const int64_t e = expert_of(off, d.e, r);
    const float* we = w + e * d.out * d.in;
    for (int64_t o = 0; o < d.out; ++o) axpy(dy[r * d.out + o], we + o * d.in, out, d.in);
  }
#pragma omp parallel for schedule(dynamic, 8)
  for (int64_t eo = 0; eo < d.e * d.out; ++eo) {  // dw[e][o] = sum over e's rows r of dy[r][o] x[r]
    const int64_t e = eo / d.out, o = eo % d.out;
    float* out = dw + eo * d.in;
    std::memset(out, 0, sizeof(float) * d.in);
    for (int64_t r = off[e]; r < off[e + 1]; ++r) axpy(dy[r * d.out + o], x + r * d.in, out, d.in);
  }
  return 0;
}

}  // extern "C"
