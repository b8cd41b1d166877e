// RMSNorm for the MindSpore CPU backend (ops.Custom func_type="aot"), forward and backward in one pass each.
//
// Why it exists: in plain ops a norm is a square, a sum, a division, an rsqrt and two multiplications by
// broadcast views that the framework makes contiguous with slow copies (~5 ms per norm of 512 x 576 values,
// ~0.3 s of a stage-1 step over the teacher's 61 norms: docs/environment.md); here it is one pass over the rows.
//
// Contract (mindedit.layers.RMSNorm's plain-ops path is the oracle in tests):
//   x [..., D] float32, weight [D] float32, eps [1] float32
//   forward:  r = 1 / sqrt(mean(x^2) + eps) per row;  y = weight * (x * r);  outputs y [..., D], r [...]
//   backward: from x, weight, r, dy:  xh = x * r,  g = dy * weight,
//             dx = r * (g - xh * mean(g * xh)),  dweight = sum over rows of dy * xh
#include <cmath>
#include <cstdint>
#include <vector>

#include <omp.h>

namespace {

int64_t rows_of(int ndim, const int64_t* shape) {
  int64_t n = 1;
  for (int i = 0; i + 1 < ndim; ++i) n *= shape[i];
  return n;
}

void forward(const float* x, const float* w, float eps, int64_t N, int64_t D, float* y, float* r) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    const float* xi = x + i * D;
    float ss = 0.f;
    for (int64_t e = 0; e < D; ++e) ss += xi[e] * xi[e];
    const float ri = 1.f / std::sqrt(ss / static_cast<float>(D) + eps);
    r[i] = ri;
    float* yi = y + i * D;
    for (int64_t e = 0; e < D; ++e) yi[e] = w[e] * (xi[e] * ri);
  }
}

void backward(const float* x, const float* w, const float* r, const float* dy, int64_t N, int64_t D, float* dx,
              float* dw) {
  const int threads = omp_get_max_threads();
  std::vector<float> partial(static_cast<size_t>(threads) * D, 0.f);
#pragma omp parallel
  {
    float* acc = partial.data() + static_cast<int64_t>(omp_get_thread_num()) * D;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < N; ++i) {
      const float *xi = x + i * D, *gi = dy + i * D;
      const float ri = r[i];
      float dot = 0.f;
      for (int64_t e = 0; e < D; ++e) {
        const float xh = xi[e] * ri;
        dot += gi[e] * w[e] * xh;
        acc[e] += gi[e] * xh;
      }
      const float m = dot / static_cast<float>(D);
      float* dxi = dx + i * D;
      for (int64_t e = 0; e < D; ++e) dxi[e] = ri * (gi[e] * w[e] - xi[e] * ri * m);
    }
  }
  for (int64_t e = 0; e < D; ++e) {
    float s = 0.f;
    for (int t = 0; t < threads; ++t) s += partial[static_cast<int64_t>(t) * D + e];
    dw[e] = s;
  }
}

}  // namespace

extern "C" {

// params: x, weight, eps | y, r
int RmsNormForward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void* stream,
                   void* extra) {
  if (nparam != 5) return 1;
  const int64_t D = shapes[0][ndims[0] - 1];
  if (shapes[1][0] != D) return 2;
  forward(static_cast<const float*>(params[0]), static_cast<const float*>(params[1]),
          *static_cast<const float*>(params[2]), rows_of(ndims[0], shapes[0]), D, static_cast<float*>(params[3]),
          static_cast<float*>(params[4]));
  return 0;
}

// params: x, weight, r, dy | dx, dweight
int RmsNormBackward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void* stream,
                    void* extra) {
  if (nparam != 6) return 1;
  const int64_t D = shapes[0][ndims[0] - 1];
  backward(static_cast<const float*>(params[0]), static_cast<const float*>(params[1]),
           static_cast<const float*>(params[2]), static_cast<const float*>(params[3]), rows_of(ndims[0], shapes[0]),
           D, static_cast<float*>(params[4]), static_cast<float*>(params[5]));
  return 0;
}

}  // extern "C"
