// The CPU kernels' shared SIMD helpers: portable vectors through GCC's vector extensions (AVX2/AVX-512 on x86
// hosts, NEON on the Kunpeng hosts of 910B servers). Each kernel library is one translation unit that includes
// this header (ascend_ops/cpu_kernel.py rebuilds every library when it changes).
#pragma once
#include <cstdint>
#include <cstring>

namespace {

typedef float vf __attribute__((vector_size(32)));
constexpr int64_t kLanes = 8;

inline vf vload(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf vset(float x) { return vf{x, x, x, x, x, x, x, x}; }

inline float hsum(vf v) {
  float s = 0.f;
  for (int64_t i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

// y[0:n] += w x[0:n]
inline void axpy(float w, const float* x, float* y, int64_t n) {
  const vf wv = vset(w);
  int64_t e = 0;
  for (; e + kLanes <= n; e += kLanes) vstore(y + e, vload(y + e) + wv * vload(x + e));
  for (; e < n; ++e) y[e] += w * x[e];
}

inline float dot(const float* a, const float* b, int64_t n) {
  vf acc = vset(0.f);
  int64_t e = 0;
  for (; e + kLanes <= n; e += kLanes) acc += vload(a + e) * vload(b + e);
  float s = hsum(acc);
  for (; e < n; ++e) s += a[e] * b[e];
  return s;
}

}  // namespace
