// Heads to the front and back, with rotary positions, for the MindSpore CPU backend (ops.Custom func_type="aot").
//
// Why it exists: attention reads [B, H, T, D] while the projections write [B, T, H, D]. On the CPU backend a
// permuted view becomes contiguous through a slow generic copy in the framework, and rotary's halves, negation,
// concatenation and broadcast cos/sin each add another (docs/environment.md: ~1 s of a 4.3 s stage-1 step). This
// kernel does the layout change and the rotation in one pass over the data.
//
// Contract (ascend_ops/reference.py: heads_reference is the oracle in tests):
//   x [B, A1, A2, D] float32; cos, sin [T, R] float32 with R = meta[1] (ignored, any shape, when R == 0)
//   meta [3] int32: {time_axis (1: x is [B, T, H, D]; 2: x is [B, H, T, D]), R, adjoint}
//   y [B, A2, A1, D]: axes 1 and 2 swapped; in each head the last R channels rotated in the HF rotate_half
//   layout by position t (their first half x1, second half x2; c1, c2, s1, s2 the halves of cos[t], sin[t]):
//     forward  y1 = x1 c1 - x2 s1,  y2 = x2 c2 + x1 s2
//     adjoint  y1 = x1 c1 + x2 s2,  y2 = x2 c2 - x1 s1   (the transpose of the forward: its backward)
//   the first D - R channels copied unchanged. The backward of a call is the call on dy with the time axis
//   swapped and adjoint flipped.
#include <cstdint>
#include <cstring>

namespace {

void heads(const float* x, const float* cos, const float* sin, const int32_t* meta, int64_t B, int64_t A1,
           int64_t A2, int64_t D, float* y) {
  const int time_axis = meta[0];
  const int64_t R = meta[1], half = R / 2, keep = D - R;
  const bool adjoint = meta[2] != 0;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < A1; ++i)
      for (int64_t j = 0; j < A2; ++j) {
        const float* src = x + ((b * A1 + i) * A2 + j) * D;
        float* dst = y + ((b * A2 + j) * A1 + i) * D;
        std::memcpy(dst, src, sizeof(float) * keep);
        if (R == 0) continue;
        const int64_t t = time_axis == 1 ? i : j;
        const float *c = cos + t * R, *s = sin + t * R, *x1 = src + keep, *x2 = x1 + half;
        float *y1 = dst + keep, *y2 = y1 + half;
        if (adjoint) {
          for (int64_t e = 0; e < half; ++e) {
            y1[e] = x1[e] * c[e] + x2[e] * s[half + e];
            y2[e] = x2[e] * c[half + e] - x1[e] * s[e];
          }
        } else {
          for (int64_t e = 0; e < half; ++e) {
            y1[e] = x1[e] * c[e] - x2[e] * s[e];
            y2[e] = x2[e] * c[half + e] + x1[e] * s[half + e];
          }
        }
      }
}

}  // namespace

extern "C" {

// params: x, cos, sin, meta | y
int Heads(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void* stream, void* extra) {
  if (nparam != 5 || ndims[0] != 4) return 1;
  const int32_t* meta = static_cast<const int32_t*>(params[3]);
  if (meta[1] % 2 != 0 || meta[1] > shapes[0][3]) return 2;
  heads(static_cast<const float*>(params[0]), static_cast<const float*>(params[1]),
        static_cast<const float*>(params[2]), meta, shapes[0][0], shapes[0][1], shapes[0][2], shapes[0][3],
        static_cast<float*>(params[4]));
  return 0;
}

}  // extern "C"
