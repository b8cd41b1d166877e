// In-place cache write for the MindSpore CPU backend, loaded by ops.Custom(func_type="aot").
//
// buf [B, H, C, D] float32 <- new [B, H, T, D] at slots pos..pos+T-1 (pos [1] int32), written where buf lies: a
// cache is a graph input passed by address, so a decode step touches its T new slots and nothing else (the CPU
// ScatterNdUpdate copies its whole buffer per call: 60 copies of the caches per decode step).
// Output: done [1] int32 = 1, for ops.depend: every reader of buf is ordered after the write through it.
// Returns 2 (an error MindSpore raises) when the slots do not fit: the reference would fail the same way.
#include <cstdint>
#include <cstring>

extern "C" {

// params: buf, new, pos | done
int CacheWrite(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void* stream,
               void* extra) {
  if (nparam != 4 || ndims[0] != 4 || ndims[1] != 4) return 1;
  const int64_t BH = shapes[0][0] * shapes[0][1], C = shapes[0][2], D = shapes[0][3], T = shapes[1][2];
  const int64_t pos = *static_cast<const int32_t*>(params[2]);
  if (shapes[1][0] * shapes[1][1] != BH || shapes[1][3] != D || pos < 0 || pos + T > C) return 2;
  float* buf = static_cast<float*>(params[0]);
  const float* src = static_cast<const float*>(params[1]);
  for (int64_t bh = 0; bh < BH; ++bh) std::memcpy(buf + (bh * C + pos) * D, src + bh * T * D, sizeof(float) * T * D);
  *static_cast<int32_t*>(params[3]) = 1;
  return 0;
}

}  // extern "C"
