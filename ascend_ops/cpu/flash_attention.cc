// Blockwise (online-softmax) causal attention for the MindSpore CPU backend, loaded by ops.Custom(func_type="aot").
//
// Why it exists: MindSpore's CPU graph mode keeps every layer's T x T score buffers alive (measured 340 MB per
// layer at 1,024 tokens, out of memory at 2,048 for a 30-layer model). This kernel keeps one score tile per
// thread, so attention memory is O(T) per head: the output and a per-row log-sum-exp for the backward pass.
//
// Contract (the same as ascend_ops/reference.py, which is the oracle in tests):
//   q [B, H, Tq, D], k [B, Hk, Ts, D], v [B, Hk, Ts, Dv]  float32, H % Hk == 0 (GQA: head h reads kv head h / (H/Hk))
//   sink [H] float32: per-head sink logit, an extra softmax column with a zero value (used when meta[2] != 0)
//   meta [4] int32: {window, sink_tokens, use_sink_logit, unused}
//   scale [1] float32
//   kv_len [1] int32: how many of the Ts stored keys are valid (a fixed-capacity cache); Tk = kv_len below
// Query row i sits at absolute position p = Tk - Tq + i (keys are positions 0..Tk-1). Key j is visible iff
//   j <= p  and  (window == 0 or p - j < window or j < sink_tokens).
// Outputs: o [B, H, Tq, Dv], lse [B, H, Tq] (natural log of the softmax denominator, sink column included).
// Backward: dq, dk, dv, dsink from (q, k, v, sink, o, lse, do), recomputing the probabilities tile by tile.
// Latent (MLA absorbed, forward only): no v; the values are the first Dv channels of each key row, Dv given by o's
// shape, read in place (no copy of the cache's latent part per call).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "simd.h"

namespace {

typedef int32_t vi __attribute__((vector_size(32)));
constexpr int64_t kBQ = 32;   // query rows per tile (multiple of 4)
constexpr int64_t kBK = 64;   // keys per tile (multiple of 16)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

// exp with Cephes' polynomial (relative error ~1e-7); exactly 0 below -87 so masked scores give zero probability.
inline vf vexp(vf x) {
  const vi under = x < vset(-87.f);
  x = x < vset(-87.f) ? vset(-87.f) : x;
  x = x > vset(88.f) ? vset(88.f) : x;
  const vf t = x * vset(1.44269504088896341f) + vset(0.5f);
  vi n = __builtin_convertvector(t, vi);
  n += (__builtin_convertvector(n, vf) > t);      // truncation -> floor (true is -1)
  const vf nf = __builtin_convertvector(n, vf);
  const vf r = x - nf * vset(0.693359375f) + nf * vset(2.12194440e-4f);
  vf y = vset(1.9875691500e-4f);
  y = y * r + vset(1.3981999507e-3f);
  y = y * r + vset(8.3334519073e-3f);
  y = y * r + vset(4.1665795894e-2f);
  y = y * r + vset(1.6666665459e-1f);
  y = y * r + vset(5.0000001201e-1f);
  y = y * r * r + r + vset(1.f);
  const vf pow2n = (vf)((n + 127) << 23);
  const vf res = y * pow2n;
  return under ? vset(0.f) : res;
}

// C[M][N] (+)= A[M][K] @ B[K][N], row-major with leading dimensions; M % 4 == 0, N % NB == 0 (NB: 8 or 16).
// A 4 x NB register block: 4 NB / 8 accumulators, NB / 8 loads of B and 4 broadcasts of A per 4 NB / 8 FMAs.
// A's element (i, p) is A[i * lda + p * ap] (ap = 1: row-major; ap = lda' of a transposed layout).
// Accumulate = false overwrites C (no zero-fill pass over C needed).
template <bool Accumulate = true, int NB = 16>
void gemm_acc(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
              int64_t ldc, int64_t ap = 1) {
  constexpr int V = NB / kLanes;
  for (int64_t i = 0; i < M; i += 4) {
    for (int64_t j = 0; j < N; j += NB) {
      float* c = C + i * ldc + j;
      vf acc[4][V];
      for (int r = 0; r < 4; ++r)
        for (int v = 0; v < V; ++v) acc[r][v] = Accumulate ? vload(c + r * ldc + v * kLanes) : vset(0.f);
      const float* a = A + i * lda;
      const float* b = B + j;
      for (int64_t p = 0; p < K; ++p, a += ap, b += ldb) {
        vf bv[V];
        for (int v = 0; v < V; ++v) bv[v] = vload(b + v * kLanes);
        for (int r = 0; r < 4; ++r) {
          const vf x = vset(a[r * lda]);
          for (int v = 0; v < V; ++v) acc[r][v] += x * bv[v];
        }
      }
      for (int r = 0; r < 4; ++r)
        for (int v = 0; v < V; ++v) vstore(c + r * ldc + v * kLanes, acc[r][v]);
    }
  }
}

// dst[rows][ld] <- src[n][cols] (row stride cols), zero-padded to rows x ld.
void copy_pad(const float* src, int64_t n, int64_t cols, int64_t rows, int64_t ld, float* dst,
              int64_t src_ld = 0) {  // src rows src_ld apart (0: cols)
  std::fill(dst, dst + rows * ld, 0.f);
  const int64_t stride = src_ld ? src_ld : cols;
  for (int64_t r = 0; r < n; ++r) std::memcpy(dst + r * ld, src + r * stride, sizeof(float) * cols);
}

// dst[cols][ld] <- transpose of src[n][cols], zero-padded to ld columns.
void copy_transpose(const float* src, int64_t n, int64_t cols, int64_t ld, float* dst) {
  std::fill(dst, dst + cols * ld, 0.f);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t e = 0; e < cols; ++e) dst[e * ld + r] = src[r * cols + e];
}

struct Dims {
  int64_t B, H, Hk, Tq, Tk, Ts, D, Dv;   // Tk: valid keys (kv_len), Ts: stored keys (buffer length)
  int64_t Sv;                            // v's row stride: Dv, or D when the values are the keys' first channels
  int window, sink_tokens, use_sink;
  float scale;
  int64_t q_offset() const { return Tk - Tq; }
};

inline bool visible(const Dims& d, int64_t p, int64_t j) {
  return j <= p && (d.window <= 0 || p - j < d.window || j < d.sink_tokens);
}

// Does any key in [k0, k1) fall in the view of any query position in [p0, p1]?
inline bool tile_visible(const Dims& d, int64_t p0, int64_t p1, int64_t k0, int64_t k1) {
  if (k0 > p1) return false;                       // entirely in the future
  if (d.window <= 0 || k0 < d.sink_tokens) return true;
  return k1 - 1 > p0 - d.window;                   // some key inside the first row's window
}

// Is every (row, key) pair of the tile visible? Then the mask can be skipped.
inline bool tile_full(const Dims& d, int64_t p0, int64_t p1, int64_t k0, int64_t k1) {
  if (k1 - 1 > p0) return false;
  return d.window <= 0 || k1 - 1 < d.sink_tokens || p1 - k0 < d.window;
}

// S = Qp Kt over one tile (Qp is pre-scaled by the softmax scale), then -inf where a key is not visible (or is
// padding).
void tile_scores(const Dims& d, const float* Qp, int64_t Dp, const float* Kt, int64_t ldk, int64_t p0, int64_t nq,
                 int64_t k0, int64_t nk, float* S) {
  gemm_acc<false>(kBQ, kBK, d.D, Qp, Dp, Kt, ldk, S, kBK);
  if (nk == kBK && tile_full(d, p0, p0 + nq - 1, k0, k0 + nk)) return;
  for (int64_t r = 0; r < kBQ; ++r) {
    float* s = S + r * kBK;
    for (int64_t c = 0; c < kBK; ++c)
      if (r >= nq || c >= nk || !visible(d, p0 + r, k0 + c)) s[c] = kNegInf;
  }
}

// Keys are packed as transposed tiles [Tkp / kBK][D][kBK] and values padded to [Tkp][Dvp] once per
// (batch, kv head), so every tile is a view for gemm_acc (Tkp = Tk rounded up to whole tiles; padding is zero).
void forward(const Dims& d, const float* q, const float* k, const float* v, const float* sink, float* o, float* lse) {
  const int64_t group = d.H / d.Hk, Dp = round16(d.D), Dvp = round16(d.Dv);
  const int64_t Tkp = (d.Tk + kBK - 1) / kBK * kBK;
  const int64_t nqb = (d.Tq + kBQ - 1) / kBQ;
  const int64_t ntasks = d.B * d.H * nqb;
  std::vector<float> kt_all(d.B * d.Hk * d.D * Tkp, 0.f), vp_all(d.B * d.Hk * Tkp * Dvp, 0.f);
#pragma omp parallel
  {
#pragma omp for
    for (int64_t bhk = 0; bhk < d.B * d.Hk; ++bhk) {
      for (int64_t k0 = 0; k0 < d.Tk; k0 += kBK)
        copy_transpose(k + (bhk * d.Ts + k0) * d.D, std::min(kBK, d.Tk - k0), d.D, kBK,
                       kt_all.data() + bhk * d.D * Tkp + k0 * d.D);
      copy_pad(v + bhk * d.Ts * d.Sv, d.Tk, d.Dv, Tkp, Dvp, vp_all.data() + bhk * Tkp * Dvp, d.Sv);
    }
    std::vector<float> Qp(kBQ * Dp), S(kBQ * kBK), acc(kBQ * Dvp), m(kBQ), l(kBQ);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntasks; ++task) {
      // Later query tiles see more keys: hand them out first for balance.
      const int64_t qb = nqb - 1 - task % nqb, bh = task / nqb, h = bh % d.H, b = bh / d.H;
      const int64_t bhk = b * d.Hk + h / group;
      const float* kt = kt_all.data() + bhk * d.D * Tkp;
      const float* vp = vp_all.data() + bhk * Tkp * Dvp;
      const int64_t i0 = qb * kBQ, nq = std::min(kBQ, d.Tq - i0);
      const int64_t p0 = d.q_offset() + i0, p1 = p0 + nq - 1;
      copy_pad(q + (bh * d.Tq + i0) * d.D, nq, d.D, kBQ, Dp, Qp.data());
      for (float& x : Qp) x *= d.scale;
      const float s0 = d.use_sink ? sink[h] : kNegInf;
      for (int64_t r = 0; r < kBQ; ++r) { m[r] = s0; l[r] = d.use_sink ? 1.f : 0.f; }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t k0 = 0; k0 <= p1; k0 += kBK) {
        const int64_t nk = std::min(kBK, d.Tk - k0);
        if (!tile_visible(d, p0, p1, k0, k0 + nk)) continue;
        tile_scores(d, Qp.data(), Dp, kt + k0 * d.D, kBK, p0, nq, k0, nk, S.data());
        for (int64_t r = 0; r < nq; ++r) {
          float* s = S.data() + r * kBK;
          vf vm = vset(m[r]);
          for (int64_t c = 0; c < kBK; c += kLanes) { const vf x = vload(s + c); vm = vm > x ? vm : x; }
          float mx = vm[0];
          for (int64_t e = 1; e < kLanes; ++e) mx = std::max(mx, vm[e]);
          float* a = acc.data() + r * Dvp;
          if (mx == kNegInf) {                      // nothing visible in this row yet
            std::fill(s, s + kBK, 0.f);
            continue;
          }
          const float corr = std::exp(m[r] - mx);
          vf vs = vset(0.f);
          for (int64_t c = 0; c < kBK; c += kLanes) {
            const vf p = vexp(vload(s + c) - vset(mx));
            vstore(s + c, p);
            vs += p;
          }
          float sum = 0.f;
          for (int64_t e = 0; e < kLanes; ++e) sum += vs[e];
          l[r] = l[r] * corr + sum;
          m[r] = mx;
          if (corr != 1.f)
            for (int64_t e = 0; e < Dvp; e += kLanes) vstore(a + e, vload(a + e) * vset(corr));
        }
        for (int64_t r = nq; r < kBQ; ++r) std::fill(S.data() + r * kBK, S.data() + (r + 1) * kBK, 0.f);
        gemm_acc(kBQ, Dvp, kBK, S.data(), kBK, vp + k0 * Dvp, Dvp, acc.data(), Dvp);
      }
      for (int64_t r = 0; r < nq; ++r) {
        float* out = o + (bh * d.Tq + i0 + r) * d.Dv;
        const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
        for (int64_t e = 0; e < d.Dv; ++e) out[e] = acc[r * Dvp + e] * inv;
        lse[bh * d.Tq + i0 + r] = l[r] > 0.f ? m[r] + std::log(l[r]) : kNegInf;
      }
    }
  }
}

// Few query rows per kv head (decoding: Tq = 1): split-K over the keys instead of query tiles (flash-decoding).
// One task is (batch, kv head, chunk of kKeyChunk keys) with every query row that reads that kv head: it reads its
// keys and values once, straight from the [Ts, D] rows (no packed copy of the cache, no 32-row tile for one row),
// and leaves each row's partial softmax (max, sum, unnormalised output); the partials then merge per row, the sink
// logit as one more partial with no value. Same contract and outputs as forward().
// Both products are register-blocked GEMMs with the chunk's keys as the long dimension: scores key-major,
// St[key][row] = K[key][:] . Q[row][:] (the keys' rows broadcast, the rows padded to N = 8, 16 or 32 lanes), so the
// softmax runs down each lane; then acc[row][:] = sum over keys of St[key][row] V[key][:] reads St transposed.
constexpr int64_t kDecodeRows = 32;    // group * Tq up to this takes the split-K path
constexpr int64_t kKeyChunk = 256;

template <int N>
void decode_chunk(const Dims& d, const float* qh, const float* kh, const float* vh, int64_t rows, int64_t k0,
                  int64_t nk, float* Qt, float* Kt, float* St, float* Vp, float* acc, float* m, float* l, float* out) {
  const int64_t Dvp = round16(d.Dv), r4 = (rows + 3) / 4 * 4, nk4 = nk / 4 * 4;
  for (int64_t e = 0; e < d.D; ++e)                                 // Qt [D][N]: the scaled rows, zero padding
    for (int64_t r = 0; r < N; ++r) Qt[e * N + r] = r < rows ? d.scale * qh[r * d.D + e] : 0.f;
  constexpr int NB = N < 16 ? N : 16;                               // (4 x 32 accumulators would spill)
  gemm_acc<false, NB>(nk4, N, d.D, kh, d.D, Qt, N, St, N);
  if (nk4 < nk) {                                                   // the last 1-3 keys through a zero-padded tile
    copy_pad(kh + nk4 * d.D, nk - nk4, d.D, 4, d.D, Kt);
    gemm_acc<false, NB>(4, N, d.D, Kt, d.D, Qt, N, St + nk4 * N, N);
  }
  const int64_t p_first = d.q_offset();
  if (!tile_full(d, p_first, d.Tk - 1, k0, k0 + nk))
    for (int64_t c = 0; c < nk; ++c)
      for (int64_t r = 0; r < rows; ++r)
        if (!visible(d, p_first + r % d.Tq, k0 + c)) St[c * N + r] = kNegInf;
  constexpr int V = N / kLanes;
  vf mx[V], sum[V], shift[V];
  for (int v = 0; v < V; ++v) { mx[v] = vset(kNegInf); sum[v] = vset(0.f); }
  for (int64_t c = 0; c < nk; ++c)
    for (int v = 0; v < V; ++v) { const vf x = vload(St + c * N + v * kLanes); mx[v] = mx[v] > x ? mx[v] : x; }
  for (int v = 0; v < V; ++v) shift[v] = mx[v] == vset(kNegInf) ? vset(0.f) : mx[v];  // a row with nothing visible
  for (int64_t c = 0; c < nk; ++c)                                                      // gets p = 0, not NaN
    for (int v = 0; v < V; ++v) {
      const vf p = vexp(vload(St + c * N + v * kLanes) - shift[v]);
      vstore(St + c * N + v * kLanes, p);
      sum[v] += p;
    }
  for (int64_t r = 0; r < rows; ++r) { m[r] = mx[r / kLanes][r % kLanes]; l[r] = sum[r / kLanes][r % kLanes]; }
  const float* vb = vh;
  int64_t ldv = d.Sv;
  if (d.Dv % 16 != 0) {                                             // values padded to whole 16-lane blocks
    copy_pad(vh, nk, d.Dv, nk, Dvp, Vp, d.Sv);
    vb = Vp;
    ldv = Dvp;
  }
  gemm_acc<false, 16>(r4, Dvp, nk, St, 1, vb, ldv, acc, Dvp, N);    // A = St read transposed: (row, key) at key * N
  for (int64_t r = 0; r < rows; ++r) std::memcpy(out + r * d.Dv, acc + r * Dvp, sizeof(float) * d.Dv);
}

void forward_decode(const Dims& d, const float* q, const float* k, const float* v, const float* sink, float* o,
                    float* lse) {
  const int64_t group = d.H / d.Hk, rows = group * d.Tq, Dvp = round16(d.Dv);
  const int64_t nchunks = std::max<int64_t>(1, (d.Tk + kKeyChunk - 1) / kKeyChunk);
  const int64_t ntasks = d.B * d.Hk * nchunks;
  const int64_t lanes = rows <= 8 ? 8 : rows <= 16 ? 16 : 32;
  const auto chunk = lanes == 8 ? decode_chunk<8> : lanes == 16 ? decode_chunk<16> : decode_chunk<32>;
  std::vector<float> part_m(ntasks * rows, kNegInf), part_l(ntasks * rows, 0.f), part_o(ntasks * rows * d.Dv, 0.f);
#pragma omp parallel
  {
    std::vector<float> Qt(d.D * lanes), Kt(4 * d.D), St(kKeyChunk * lanes), acc(lanes * Dvp);
    std::vector<float> Vp(d.Dv % 16 ? kKeyChunk * Dvp : 0);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntasks; ++task) {
      const int64_t bhk = task / nchunks, k0 = task % nchunks * kKeyChunk, nk = std::min(kKeyChunk, d.Tk - k0);
      const int64_t b = bhk / d.Hk;
      if (nk <= 0 || !tile_visible(d, d.q_offset(), d.Tk - 1, k0, k0 + nk)) continue;
      // row r: query head (bhk % Hk) * group + r / Tq of batch b, query index r % Tq
      const float* qh = q + ((b * d.H + bhk % d.Hk * group) * d.Tq) * d.D;
      chunk(d, qh, k + (bhk * d.Ts + k0) * d.D, v + (bhk * d.Ts + k0) * d.Sv, rows, k0, nk, Qt.data(), Kt.data(),
            St.data(), Vp.data(), acc.data(), part_m.data() + task * rows, part_l.data() + task * rows,
            part_o.data() + task * rows * d.Dv);
    }
#pragma omp for
    for (int64_t bh = 0; bh < d.B * d.H; ++bh) {  // merge the chunks' partials of each row
      const int64_t b = bh / d.H, h = bh % d.H, r0 = (h % group) * d.Tq;
      const int64_t t0 = (b * d.Hk + h / group) * nchunks;
      for (int64_t i = 0; i < d.Tq; ++i) {
        const int64_t r = r0 + i;
        float mx = d.use_sink ? sink[h] : kNegInf;
        for (int64_t c = 0; c < nchunks; ++c) mx = std::max(mx, part_m[(t0 + c) * rows + r]);
        float* out = o + (bh * d.Tq + i) * d.Dv;
        std::fill(out, out + d.Dv, 0.f);
        if (mx == kNegInf) {
          lse[bh * d.Tq + i] = kNegInf;
          continue;
        }
        float total = d.use_sink ? std::exp(sink[h] - mx) : 0.f;
        for (int64_t c = 0; c < nchunks; ++c) {
          const float mc = part_m[(t0 + c) * rows + r];
          if (mc == kNegInf) continue;
          const float w = std::exp(mc - mx);
          total += w * part_l[(t0 + c) * rows + r];
          axpy(w, part_o.data() + ((t0 + c) * rows + r) * d.Dv, out, d.Dv);
        }
        for (int64_t e = 0; e < d.Dv; ++e) out[e] /= total;
        lse[bh * d.Tq + i] = mx + std::log(total);
      }
    }
  }
}

// One task per (batch, kv head): it owns dk/dv of that head and dq of the query heads in its group, so no writes
// race. Key tiles are the outer loop (FlashAttention-2 order): a tile's dK/dV stay in a local buffer.
void backward(const Dims& d, const float* q, const float* k, const float* v, const float* sink, const float* o,
              const float* lse, const float* dout, float* dq, float* dk, float* dv, float* dsink) {
  const int64_t group = d.H / d.Hk, Dp = round16(d.D), Dvp = round16(d.Dv);
  std::memset(dq, 0, sizeof(float) * d.B * d.H * d.Tq * d.D);
  std::memset(dk, 0, sizeof(float) * d.B * d.Hk * d.Ts * d.D);
  std::memset(dv, 0, sizeof(float) * d.B * d.Hk * d.Ts * d.Dv);
  std::vector<float> delta_all(d.B * d.H * d.Tq), dsink_b(d.B * d.H, 0.f);
  // delta_i = dO_i . O_i, the softmax backward's row term; the sink column's gradient is -sum_i p_sink,i delta_i.
  for (int64_t bh = 0; bh < d.B * d.H; ++bh)
    for (int64_t i = 0; i < d.Tq; ++i) {
      float acc = 0.f;
      const float* a = dout + (bh * d.Tq + i) * d.Dv;
      const float* b = o + (bh * d.Tq + i) * d.Dv;
      for (int64_t e = 0; e < d.Dv; ++e) acc += a[e] * b[e];
      delta_all[bh * d.Tq + i] = acc;
      const float L = lse[bh * d.Tq + i];
      if (d.use_sink && L != kNegInf) dsink_b[bh] -= std::exp(sink[bh % d.H] - L) * acc;
    }
#pragma omp parallel
  {
    std::vector<float> Qp(kBQ * Dp), dOp(kBQ * Dvp), Kt(d.D * kBK), Kp(kBK * Dp), Vt(d.Dv * kBK);
    std::vector<float> S(kBQ * kBK), dS(kBQ * kBK), Pt(kBK * kBQ), dSt(kBK * kBQ), dKt(kBK * Dp), dVt(kBK * Dvp);
    std::vector<float> dQt(kBQ * Dp);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < d.B * d.Hk; ++task) {
      const int64_t b = task / d.Hk, hk = task % d.Hk;
      const float* kh = k + ((b * d.Hk + hk) * d.Ts) * d.D;
      const float* vh = v + ((b * d.Hk + hk) * d.Ts) * d.Dv;
      for (int64_t k0 = 0; k0 < d.Tk; k0 += kBK) {
        const int64_t nk = std::min(kBK, d.Tk - k0);
        copy_transpose(kh + k0 * d.D, nk, d.D, kBK, Kt.data());
        copy_pad(kh + k0 * d.D, nk, d.D, kBK, Dp, Kp.data());
        copy_transpose(vh + k0 * d.Dv, nk, d.Dv, kBK, Vt.data());
        std::fill(dKt.begin(), dKt.end(), 0.f);
        std::fill(dVt.begin(), dVt.end(), 0.f);
        for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
          const int64_t bh = b * d.H + h;
          for (int64_t i0 = 0; i0 < d.Tq; i0 += kBQ) {
            const int64_t nq = std::min(kBQ, d.Tq - i0);
            const int64_t p0 = d.q_offset() + i0, p1 = p0 + nq - 1;
            if (!tile_visible(d, p0, p1, k0, k0 + nk)) continue;
            copy_pad(q + (bh * d.Tq + i0) * d.D, nq, d.D, kBQ, Dp, Qp.data());
            for (float& x : Qp) x *= d.scale;
            copy_pad(dout + (bh * d.Tq + i0) * d.Dv, nq, d.Dv, kBQ, Dvp, dOp.data());
            tile_scores(d, Qp.data(), Dp, Kt.data(), kBK, p0, nq, k0, nk, S.data());
            gemm_acc<false>(kBQ, kBK, d.Dv, dOp.data(), Dvp, Vt.data(), kBK, dS.data(), kBK);  // dP = dO V^T
            for (int64_t r = 0; r < kBQ; ++r) {
              float* s = S.data() + r * kBK;
              float* ds = dS.data() + r * kBK;
              const float L = r < nq ? lse[bh * d.Tq + i0 + r] : kNegInf;
              if (L == kNegInf) {
                std::fill(s, s + kBK, 0.f);
                std::fill(ds, ds + kBK, 0.f);
                continue;
              }
              const vf dl = vset(delta_all[bh * d.Tq + i0 + r]);
              for (int64_t c = 0; c < kBK; c += kLanes) {
                const vf p = vexp(vload(s + c) - vset(L));
                vstore(s + c, p);                                              // P
                vstore(ds + c, p * (vload(ds + c) - dl));                      // dS (of the scaled scores)
              }
            }
            for (int64_t r = 0; r < kBQ; ++r)
              for (int64_t c = 0; c < kBK; ++c) {
                Pt[c * kBQ + r] = S[r * kBK + c];
                dSt[c * kBQ + r] = dS[r * kBK + c];
              }
            gemm_acc(kBK, Dvp, kBQ, Pt.data(), kBQ, dOp.data(), Dvp, dVt.data(), Dvp);   // dV += P^T dO
            gemm_acc(kBK, Dp, kBQ, dSt.data(), kBQ, Qp.data(), Dp, dKt.data(), Dp);      // dK += dS^T (scale Q)
            gemm_acc<false>(kBQ, Dp, kBK, dS.data(), kBK, Kp.data(), Dp, dQt.data(), Dp);  // dQ = dS K (x scale below)
            for (int64_t r = 0; r < nq; ++r) {
              float* dqr = dq + (bh * d.Tq + i0 + r) * d.D;
              for (int64_t e = 0; e < d.D; ++e) dqr[e] += dQt[r * Dp + e] * d.scale;
            }
          }
        }
        for (int64_t c = 0; c < nk; ++c) {
          std::memcpy(dk + ((b * d.Hk + hk) * d.Ts + k0 + c) * d.D, dKt.data() + c * Dp, sizeof(float) * d.D);
          std::memcpy(dv + ((b * d.Hk + hk) * d.Ts + k0 + c) * d.Dv, dVt.data() + c * Dvp, sizeof(float) * d.Dv);
        }
      }
    }
  }
  for (int64_t h = 0; h < d.H; ++h) {
    float acc = 0.f;
    for (int64_t b = 0; b < d.B; ++b) acc += dsink_b[b * d.H + h];
    dsink[h] = acc;
  }
}

// shapes[0]: q, shapes[1]: k; dv: the values' width, sv: their row stride
Dims read_dims(int64_t** shapes, int64_t dv, int64_t sv, const void* meta_p, const void* scale_p,
               const void* kv_len_p) {
  const int32_t* meta = static_cast<const int32_t*>(meta_p);
  Dims d;
  d.B = shapes[0][0]; d.H = shapes[0][1]; d.Tq = shapes[0][2]; d.D = shapes[0][3];
  d.Hk = shapes[1][1]; d.Ts = shapes[1][2]; d.Dv = dv; d.Sv = sv;
  d.Tk = std::min<int64_t>(d.Ts, std::max<int64_t>(d.Tq, *static_cast<const int32_t*>(kv_len_p)));
  d.window = meta[0]; d.sink_tokens = meta[1]; d.use_sink = meta[2];
  d.scale = *static_cast<const float*>(scale_p);
  return d;
}

}  // namespace

extern "C" {

// params: q, k, v, sink, meta, scale, kv_len | o, lse
int FlashAttentionForward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void* stream,
                          void* extra) {
  if (nparam != 9) return 1;
  const Dims d = read_dims(shapes, shapes[2][3], shapes[2][3], params[4], params[5], params[6]);
  if (d.H % d.Hk != 0) return 2;
  const auto run = d.H / d.Hk * d.Tq <= kDecodeRows ? forward_decode : forward;  // few rows per kv head: split-K
  run(d, static_cast<const float*>(params[0]), static_cast<const float*>(params[1]),
      static_cast<const float*>(params[2]), static_cast<const float*>(params[3]), static_cast<float*>(params[7]),
      static_cast<float*>(params[8]));
  return 0;
}

// params: q, kv, sink, meta, scale, kv_len | o, lse  (latent: the values are kv's first Dv = o.shape[3] channels)
int FlashAttentionLatentForward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes,
                                void* stream, void* extra) {
  if (nparam != 8) return 1;
  const Dims d = read_dims(shapes, shapes[6][3], shapes[1][3], params[3], params[4], params[5]);
  if (d.H % d.Hk != 0 || d.Dv > d.D) return 2;
  const auto run = d.H / d.Hk * d.Tq <= kDecodeRows ? forward_decode : forward;
  const float* kv = static_cast<const float*>(params[1]);
  run(d, static_cast<const float*>(params[0]), kv, kv, static_cast<const float*>(params[2]),
      static_cast<float*>(params[6]), static_cast<float*>(params[7]));
  return 0;
}

// params: q, k, v, sink, meta, scale, kv_len, o, lse, do | dq, dk, dv, dsink
int FlashAttentionBackward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void* stream,
                           void* extra) {
  if (nparam != 14) return 1;
  const Dims d = read_dims(shapes, shapes[2][3], shapes[2][3], params[4], params[5], params[6]);
  if (d.H % d.Hk != 0) return 2;
  backward(d, static_cast<const float*>(params[0]), static_cast<const float*>(params[1]),
           static_cast<const float*>(params[2]), static_cast<const float*>(params[3]),
           static_cast<const float*>(params[7]), static_cast<const float*>(params[8]),
           static_cast<const float*>(params[9]), static_cast<float*>(params[10]), static_cast<float*>(params[11]),
           static_cast<float*>(params[12]), static_cast<float*>(params[13]));
  return 0;
}

}  // extern "C"
