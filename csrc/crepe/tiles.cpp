#include "tiles.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "facility_location.hpp"  // kBlock

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CREPE_HAVE_AVX_BUILD 1
#endif

namespace crepe {

template <typename T>
void pack_tile(const T* xp, std::int64_t, std::int64_t d, const std::int64_t* idx, int w,
               T* cand) {
  for (int l = 0; l < kTile; ++l) {
    const T* x = xp + panel_at(idx[l < w ? l : 0], 0, d);
    for (std::int64_t k = 0; k < d; ++k) cand[k * kTile + l] = x[k * kPanel];
  }
}

namespace {

// ---- portable build: one lane at a time, same operations in the same order.

template <typename T>
void lane_d2(const T* xp, std::int64_t d, const T* cand, std::int64_t i, T* d2) {
  for (int l = 0; l < kTile; ++l) d2[l] = T(0);
  const T* x = xp + panel_at(i, 0, d);
  for (std::int64_t k = 0; k < d; ++k) {
    const T xi = x[k * kPanel];
    for (int l = 0; l < kTile; ++l) {
      const T t = cand[k * kTile + l] - xi;
      d2[l] += t * t;
    }
  }
}

// Adds lanes [0, w) of v to *row, one after another.
template <typename T>
inline void add_row(double* row, const T* v, int w) {
  double r = *row;
  for (int l = 0; l < w; ++l) r += static_cast<double>(v[l]);
  *row = r;
}

template <typename T>
void colsum_generic(const T* xp, std::int64_t n, std::int64_t d, const T* cand, double* colsum,
                    T* max_d2, const RowSums* range, T* d2_out) {
  double total[kTile] = {};
  T mx = T(0);
  const std::int64_t first = range ? range->first : 0, last = range ? range->last : n;
  double* rows = range ? range->rows : nullptr;
  for (std::int64_t lo = first; lo < last; lo += kBlock) {
    double part[kTile] = {};
    for (std::int64_t i = lo; i < std::min(last, lo + kBlock); ++i) {
      T d2[kTile], s[kTile];
      lane_d2(xp, d, cand, i, d2);
      if (d2_out) std::copy(d2, d2 + kTile, d2_out + (i - first) * kBlock);
      for (int l = 0; l < kTile; ++l) {
        s[l] = std::sqrt(d2[l]);
        part[l] += static_cast<double>(s[l]);
        mx = std::max(mx, d2[l]);
      }
      if (rows) add_row(rows + (i - first), s, range->w);
    }
    for (int l = 0; l < kTile; ++l) total[l] += part[l];
  }
  std::copy(total, total + kTile, colsum);
  *max_d2 = mx;
}

// Lanes still recording: count <= cap (a lane at cap overflows on its next entry).
template <typename T>
unsigned live_lanes(const TileCapture<T>& c) {
  unsigned live = 0;
  for (int l = 0; l < kTile; ++l)
    if (c.count[l] <= c.cap) live |= 1u << l;
  return live;
}

// Appends point i with distances dist[l] to every live lane set in mask.
template <typename T>
void record(TileCapture<T>& c, unsigned& live, unsigned mask, std::int64_t i, const T* dist) {
  for (unsigned m = mask & live; m; m &= m - 1) {
    const int l = __builtin_ctz(m);
    std::int64_t& cnt = c.count[l];
    if (cnt < c.cap) {
      c.out[l * c.cap + cnt] = {static_cast<std::int32_t>(i), dist[l]};
      ++cnt;
    } else {
      cnt = c.cap + 1;
      live &= ~(1u << l);
    }
  }
}

// After `done` of n points, stops recording the lanes on course for more than
// twice the cap (points are in input order, so the rate so far is a fair
// forecast), rather than writing cap entries and then discarding them. A lane
// stopped here is only a missed list, never a wrong one.
template <typename T>
unsigned keep_hopeful(TileCapture<T>& c, unsigned live, std::int64_t done, std::int64_t n) {
  if (!c.forecast) return live;
  for (int l = 0; l < kTile; ++l)
    if ((live >> l & 1u) && c.count[l] * n > 2 * c.cap * done) {
      c.count[l] = c.cap + 1;
      live &= ~(1u << l);
    }
  return live;
}

// Row j of rg from one point's distances to the lanes in mask m (those with
// d2 < cur2 of the lane's point), in lane order: the zero terms of the other
// lanes would leave the row sum unchanged.
template <typename T>
inline void row_gains_masked(RowGains<T>& rg, std::int64_t j, unsigned m, const T* dist,
                             const double* cur) {
  if (!m) return;
  double r = rg.rows[j];
  std::vector<PointDist<T>>* L = rg.lists ? rg.lists + j : nullptr;
  for (; m; m &= m - 1) {
    const int l = __builtin_ctz(m);
    const std::int64_t e = rg.lane_idx[l];
    r += cur[e] - static_cast<double>(dist[l]);
    if (L && static_cast<std::int64_t>(L->size()) <= rg.cap)
      L->push_back({static_cast<std::int32_t>(e), dist[l]});
  }
  rg.rows[j] = r;
}

// The same from one point's squared distances and distances to the lanes
// (dist is read only where d2 < cur2 of the lane).
template <typename T>
inline void add_row_gains(RowGains<T>& rg, std::int64_t j, const T* d2, const T* dist,
                          const double* cur, const T* cur2) {
  unsigned m = 0;
  for (int l = 0; l < rg.w; ++l) m |= static_cast<unsigned>(d2[l] < cur2[rg.lane_idx[l]]) << l;
  row_gains_masked(rg, j, m, dist, cur);
}

template <bool Cap, typename T>
void gain_generic(const T* xp, std::int64_t n, std::int64_t d, const T* cand, const double* cur,
                  const T* cur2, double* gain, TileCapture<T>* capture,
                  const PointBlocks* blocks, RowGains<T>* rg, const T* d2_in) {
  unsigned live = Cap ? live_lanes(*capture) : 0;
  const std::int64_t first = blocks ? blocks->first : 0, last = blocks ? blocks->last : n;
  double total[kTile] = {};
  for (std::int64_t lo = first; lo < last; lo += kBlock) {
    double part[kTile] = {};
    for (std::int64_t i = lo; i < std::min(last, lo + kBlock); ++i) {
      T d2[kTile];
      if (d2_in) {
        std::copy(d2_in + (i - first) * kBlock, d2_in + (i - first) * kBlock + kTile, d2);
      } else {
        lane_d2(xp, d, cand, i, d2);
      }
      // d2 >= cur2 implies sqrt(d2) >= cur: the term is zero, skip its sqrt.
      unsigned mask = 0;
      T dist[kTile];
      for (int l = 0; l < kTile; ++l)
        if (rg || d2[l] < cur2[i]) dist[l] = std::sqrt(d2[l]);
      for (int l = 0; l < kTile; ++l)
        if (d2[l] < cur2[i]) {
          part[l] += cur[i] - static_cast<double>(dist[l]);
          mask |= 1u << l;
        }
      if (rg) add_row_gains(*rg, i - first, d2, dist, cur, cur2);
      if (Cap && (mask & live)) record(*capture, live, mask, i, dist);
    }
    for (int l = 0; l < kTile; ++l) total[l] += part[l];
    if (blocks) std::copy(part, part + kTile, blocks->parts + (lo - first) / kBlock * kTile);
    if (Cap && live) live = keep_hopeful(*capture, live, std::min(last, lo + kBlock) - first, n);
  }
  std::copy(total, total + kTile, gain);
}

#ifdef CREPE_HAVE_AVX_BUILD
// ---- AVX2+FMA builds: float sqrt/compare in float, widened exactly to double
// for the sums. Every product and sum rounds on its own, as in the portable
// build: FMA serves only as c - x computed as -(x * 1) + c, whose product is
// exact, so it rounds once, to the bits of a subtraction. That moves part of
// the subtractions from the two add pipes to the two multiply pipes, which a
// sub-mul-add chain would otherwise leave half idle.
#define CREPE_SIMD __attribute__((target("avx2,fma")))

CREPE_SIMD inline __m256d sub_on_mul_pipe(__m256d c, __m256d x) {
  return _mm256_fnmadd_pd(x, _mm256_set1_pd(1.0), c);
}
CREPE_SIMD inline __m256 sub_on_mul_pipe(__m256 c, __m256 x) {
  return _mm256_fnmadd_ps(x, _mm256_set1_ps(1.0f), c);
}

// Squared distances of P consecutive points of one panel (x = the first one's
// coordinate 0 in the panel layout) to the tile. The sum over dims is a chain
// of dependent adds per register; P points give P times more independent
// chains, which is what keeps the FP pipes busy. Points past the class's end
// are the panel's zero padding: computed, never used.
// double: 4 registers x 4 lanes per point.
// The sums live in a local array, copied out at the end: __m256 types may
// alias anything, so sums kept in the caller's array were stored back to
// memory at every k (8 stores per step, the loop's bottleneck).
template <int P>
CREPE_SIMD inline void d2_pd(const double* x, std::int64_t d, const double* cand,
                             __m256d (*out)[4]) {
  __m256d acc[P][4];
  for (int p = 0; p < P; ++p)
    for (int r = 0; r < 4; ++r) acc[p][r] = _mm256_setzero_pd();
  for (std::int64_t k = 0; k < d; ++k) {
    __m256d c[4];
    for (int r = 0; r < 4; ++r) c[r] = _mm256_loadu_pd(cand + k * kTile + 4 * r);
    for (int p = 0; p < P; ++p) {
      const __m256d xi = _mm256_broadcast_sd(x + k * kPanel + p);
      for (int r = 0; r < 4; ++r) {
        const __m256d t = r < 2 ? sub_on_mul_pipe(c[r], xi) : _mm256_sub_pd(c[r], xi);
        acc[p][r] = _mm256_add_pd(acc[p][r], _mm256_mul_pd(t, t));
      }
    }
  }
  for (int p = 0; p < P; ++p)
    for (int r = 0; r < 4; ++r) out[p][r] = acc[p][r];
}

// float: 2 registers x 8 lanes per point.
template <int P>
CREPE_SIMD inline void d2_ps(const float* x, std::int64_t d, const float* cand,
                             __m256 (*out)[2]) {
  __m256 acc[P][2];
  for (int p = 0; p < P; ++p) acc[p][0] = acc[p][1] = _mm256_setzero_ps();
  for (std::int64_t k = 0; k < d; ++k) {
    const __m256 c[2] = {_mm256_loadu_ps(cand + k * kTile), _mm256_loadu_ps(cand + k * kTile + 8)};
    for (int p = 0; p < P; ++p) {
      const __m256 xi = _mm256_broadcast_ss(x + k * kPanel + p);
      const __m256 t0 = sub_on_mul_pipe(c[0], xi), t1 = _mm256_sub_ps(c[1], xi);
      acc[p][0] = _mm256_add_ps(acc[p][0], _mm256_mul_ps(t0, t0));
      acc[p][1] = _mm256_add_ps(acc[p][1], _mm256_mul_ps(t1, t1));
    }
  }
  for (int p = 0; p < P; ++p) out[p][0] = acc[p][0], out[p][1] = acc[p][1];
}

constexpr int kPointsPd = 2;  // points per step: 2 x 4 registers = 8 chains
constexpr int kPointsPs = 4;  // 4 x 2 registers = 8 chains

// Lanes 4q..4q+3 of a float pair of registers, widened to double (exact).
CREPE_SIMD inline __m256d widen(const __m256* v, int q) {
  return _mm256_cvtps_pd(q % 2 ? _mm256_extractf128_ps(v[q / 2], 1)
                               : _mm256_castps256_ps128(v[q / 2]));
}

// add_row_gains for the AVX kernels: the lanes with d2 < cur2 of their point
// found by one vector compare against the tile's LaneCur2 (cur2 of
// lane_idx[l], set once per tile) instead of a branch per lane.
template <typename T>
struct LaneCur2 {
  T v[kTile];  // cur2 of the tile's lanes; +0 past w (no lane gains there)
  unsigned wmask = 0;
  LaneCur2() = default;
  LaneCur2(const RowGains<T>& rg, const T* cur2) : wmask((1u << rg.w) - 1) {
    for (int l = 0; l < kTile; ++l) v[l] = l < rg.w ? cur2[rg.lane_idx[l]] : T(0);
  }
};

CREPE_SIMD inline unsigned lanes_below(const __m256d* d2, const LaneCur2<double>& lc) {
  unsigned m = 0;
  for (int r = 0; r < 4; ++r)
    m |= static_cast<unsigned>(_mm256_movemask_pd(
             _mm256_cmp_pd(d2[r], _mm256_loadu_pd(lc.v + 4 * r), _CMP_LT_OQ))) << (4 * r);
  return m & lc.wmask;
}

CREPE_SIMD inline unsigned lanes_below(const __m256* d2, const LaneCur2<float>& lc) {
  unsigned m = 0;
  for (int r = 0; r < 2; ++r)
    m |= static_cast<unsigned>(_mm256_movemask_ps(
             _mm256_cmp_ps(d2[r], _mm256_loadu_ps(lc.v + 8 * r), _CMP_LT_OQ))) << (8 * r);
  return m & lc.wmask;
}

CREPE_SIMD void colsum_avx(const double* xp, std::int64_t n, std::int64_t d, const double* cand,
                          double* colsum, double* max_d2, const RowSums* range, double* d2_out) {
  __m256d total[4], mx = _mm256_setzero_pd();
  for (int r = 0; r < 4; ++r) total[r] = _mm256_setzero_pd();
  const std::int64_t first = range ? range->first : 0, last = range ? range->last : n;
  double* rows = range ? range->rows : nullptr;
  for (std::int64_t lo = first; lo < last; lo += kBlock) {
    __m256d part[4];
    for (int r = 0; r < 4; ++r) part[r] = _mm256_setzero_pd();
    const std::int64_t hi = std::min(last, lo + kBlock);
    for (std::int64_t i = lo; i < hi;) {
      __m256d acc[kPointsPd][4];
      const int np = static_cast<int>(std::min<std::int64_t>(kPointsPd, hi - i));
      d2_pd<kPointsPd>(xp + panel_at(i, 0, d), d, cand, acc);
      for (int p = 0; p < np; ++p) {  // points in index order: each lane's sum stays sequential
        if (d2_out)
          for (int r = 0; r < 4; ++r) _mm256_storeu_pd(d2_out + (i + p - first) * kBlock + 4 * r, acc[p][r]);
        __m256d s[4];
        for (int r = 0; r < 4; ++r) {
          s[r] = _mm256_sqrt_pd(acc[p][r]);
          part[r] = _mm256_add_pd(part[r], s[r]);
          mx = _mm256_max_pd(mx, acc[p][r]);
        }
        if (rows) {
          double v[kTile];
          for (int r = 0; r < 4; ++r) _mm256_storeu_pd(v + 4 * r, s[r]);
          add_row(rows + (i + p - first), v, range->w);
        }
      }
      i += np;
    }
    for (int r = 0; r < 4; ++r) total[r] = _mm256_add_pd(total[r], part[r]);
  }
  for (int r = 0; r < 4; ++r) _mm256_storeu_pd(colsum + 4 * r, total[r]);
  double m[4];
  _mm256_storeu_pd(m, mx);
  *max_d2 = *std::max_element(m, m + 4);
}

CREPE_SIMD void colsum_avx(const float* xp, std::int64_t n, std::int64_t d, const float* cand,
                          double* colsum, float* max_d2, const RowSums* range, float* d2_out) {
  __m256d total[4];
  __m256 mx = _mm256_setzero_ps();
  for (int r = 0; r < 4; ++r) total[r] = _mm256_setzero_pd();
  const std::int64_t first = range ? range->first : 0, last = range ? range->last : n;
  double* rows = range ? range->rows : nullptr;
  for (std::int64_t lo = first; lo < last; lo += kBlock) {
    __m256d part[4];
    for (int r = 0; r < 4; ++r) part[r] = _mm256_setzero_pd();
    const std::int64_t hi = std::min(last, lo + kBlock);
    for (std::int64_t i = lo; i < hi;) {
      __m256 acc[kPointsPs][2];
      const int np = static_cast<int>(std::min<std::int64_t>(kPointsPs, hi - i));
      d2_ps<kPointsPs>(xp + panel_at(i, 0, d), d, cand, acc);
      for (int p = 0; p < np; ++p) {
        if (d2_out) {
          _mm256_storeu_ps(d2_out + (i + p - first) * kBlock, acc[p][0]);
          _mm256_storeu_ps(d2_out + (i + p - first) * kBlock + 8, acc[p][1]);
        }
        const __m256 s[2] = {_mm256_sqrt_ps(acc[p][0]), _mm256_sqrt_ps(acc[p][1])};
        mx = _mm256_max_ps(mx, _mm256_max_ps(acc[p][0], acc[p][1]));
        for (int q = 0; q < 4; ++q) part[q] = _mm256_add_pd(part[q], widen(s, q));
        if (rows) {
          float v[kTile];
          _mm256_storeu_ps(v, s[0]);
          _mm256_storeu_ps(v + 8, s[1]);
          add_row(rows + (i + p - first), v, range->w);
        }
      }
      i += np;
    }
    for (int r = 0; r < 4; ++r) total[r] = _mm256_add_pd(total[r], part[r]);
  }
  for (int r = 0; r < 4; ++r) _mm256_storeu_pd(colsum + 4 * r, total[r]);
  float m[8];
  _mm256_storeu_ps(m, mx);
  *max_d2 = *std::max_element(m, m + 8);
}

// The end of gain_avx's block [lo, hi): its partials join the total (and go
// to blocks->parts with a run), and lanes bound to overflow stop recording.
template <bool Cap, typename T>
CREPE_SIMD inline void end_block(const __m256d* part, __m256d* total, const PointBlocks* blocks,
                                std::int64_t lo, std::int64_t hi, std::int64_t n,
                                TileCapture<T>* capture, unsigned& live) {
  for (int r = 0; r < 4; ++r) total[r] = _mm256_add_pd(total[r], part[r]);
  const std::int64_t first = blocks ? blocks->first : 0;
  if (blocks)
    for (int r = 0; r < 4; ++r)
      _mm256_storeu_pd(blocks->parts + (lo - first) / kBlock * kTile + 4 * r, part[r]);
  if (Cap && live) live = keep_hopeful(*capture, live, hi - first, n);
}

template <bool Cap>
CREPE_SIMD void gain_avx(const double* xp, std::int64_t n, std::int64_t d, const double* cand,
                        const double* cur, const double* cur2, double* gain,
                        TileCapture<double>* capture, const PointBlocks* blocks,
                        RowGains<double>* rg, const double* d2_in) {
  unsigned live = Cap ? live_lanes(*capture) : 0;
  const LaneCur2<double> lc = rg ? LaneCur2<double>(*rg, cur2) : LaneCur2<double>{};
  const std::int64_t first = blocks ? blocks->first : 0, last = blocks ? blocks->last : n;
  __m256d total[4];
  for (int r = 0; r < 4; ++r) total[r] = _mm256_setzero_pd();
  for (std::int64_t lo = first; lo < last; lo += kBlock) {
    __m256d part[4];
    for (int r = 0; r < 4; ++r) part[r] = _mm256_setzero_pd();
    const std::int64_t hi = std::min(last, lo + kBlock);
    for (std::int64_t i = lo; i < hi;) {
      __m256d acc[kPointsPd][4];
      const int np = static_cast<int>(std::min<std::int64_t>(kPointsPd, hi - i));
      if (d2_in) {
        for (int p = 0; p < np; ++p)
          for (int r = 0; r < 4; ++r) acc[p][r] = _mm256_loadu_pd(d2_in + (i + p - first) * kBlock + 4 * r);
      } else {
        d2_pd<kPointsPd>(xp + panel_at(i, 0, d), d, cand, acc);
      }
      for (int p = 0; p < np; ++p) {
        const __m256d c2 = _mm256_set1_pd(cur2[i + p]);
        __m256d lt[4];
        int any = 0;
        for (int r = 0; r < 4; ++r) {
          lt[r] = _mm256_cmp_pd(acc[p][r], c2, _CMP_LT_OQ);
          any |= _mm256_movemask_pd(lt[r]);
        }
        if (!any && !rg) continue;  // no lane gains from this point: all its terms are zero
        const __m256d c = _mm256_set1_pd(cur[i + p]);
        __m256d s[4];
        // Lanes with d2 < cur2 add cur - sqrt(d2) >= 0; the others add +0.0,
        // which leaves the partial sum unchanged, as in the generic build.
        for (int r = 0; r < 4; ++r) {
          s[r] = _mm256_sqrt_pd(acc[p][r]);
          part[r] = _mm256_add_pd(part[r], _mm256_and_pd(lt[r], _mm256_sub_pd(c, s[r])));
        }
        if (rg) {
          const unsigned m = lanes_below(acc[p], lc);
          if (m) {
            double v[kTile];
            for (int r = 0; r < 4; ++r) _mm256_storeu_pd(v + 4 * r, s[r]);
            row_gains_masked(*rg, i + p - first, m, v, cur);
          }
        }
        if (Cap) {
          const unsigned mask = _mm256_movemask_pd(lt[0]) | _mm256_movemask_pd(lt[1]) << 4 |
                                _mm256_movemask_pd(lt[2]) << 8 | _mm256_movemask_pd(lt[3]) << 12;
          if (mask & live) {
            double v[kTile];
            for (int r = 0; r < 4; ++r) _mm256_storeu_pd(v + 4 * r, s[r]);
            record(*capture, live, mask, i + p, v);
          }
        }
      }
      i += np;
    }
    end_block<Cap>(part, total, blocks, lo, hi, n, capture, live);
  }
  for (int r = 0; r < 4; ++r) _mm256_storeu_pd(gain + 4 * r, total[r]);
}

template <bool Cap>
CREPE_SIMD void gain_avx(const float* xp, std::int64_t n, std::int64_t d, const float* cand,
                        const double* cur, const float* cur2, double* gain,
                        TileCapture<float>* capture, const PointBlocks* blocks,
                        RowGains<float>* rg, const float* d2_in) {
  unsigned live = Cap ? live_lanes(*capture) : 0;
  const LaneCur2<float> lc = rg ? LaneCur2<float>(*rg, cur2) : LaneCur2<float>{};
  const std::int64_t first = blocks ? blocks->first : 0, last = blocks ? blocks->last : n;
  __m256d total[4];
  for (int r = 0; r < 4; ++r) total[r] = _mm256_setzero_pd();
  for (std::int64_t lo = first; lo < last; lo += kBlock) {
    __m256d part[4];
    for (int r = 0; r < 4; ++r) part[r] = _mm256_setzero_pd();
    const std::int64_t hi = std::min(last, lo + kBlock);
    for (std::int64_t i = lo; i < hi;) {
      __m256 acc[kPointsPs][2];
      const int np = static_cast<int>(std::min<std::int64_t>(kPointsPs, hi - i));
      if (d2_in) {
        for (int p = 0; p < np; ++p)
          for (int r = 0; r < 2; ++r) acc[p][r] = _mm256_loadu_ps(d2_in + (i + p - first) * kBlock + 8 * r);
      } else {
        d2_ps<kPointsPs>(xp + panel_at(i, 0, d), d, cand, acc);
      }
      for (int p = 0; p < np; ++p) {
        const __m256 c2 = _mm256_set1_ps(cur2[i + p]);
        const __m256 lt[2] = {_mm256_cmp_ps(acc[p][0], c2, _CMP_LT_OQ),
                              _mm256_cmp_ps(acc[p][1], c2, _CMP_LT_OQ)};
        const unsigned mask = _mm256_movemask_ps(lt[0]) | _mm256_movemask_ps(lt[1]) << 8;
        if (!mask && !rg) continue;
        const __m256 s[2] = {_mm256_sqrt_ps(acc[p][0]), _mm256_sqrt_ps(acc[p][1])};
        if (rg) {
          const unsigned m = lanes_below(acc[p], lc);
          if (m) {
            float v[kTile];
            _mm256_storeu_ps(v, s[0]);
            _mm256_storeu_ps(v + 8, s[1]);
            row_gains_masked(*rg, i + p - first, m, v, cur);
          }
          if (!mask) continue;
        }
        if (Cap && (mask & live)) {
          float v[kTile];
          _mm256_storeu_ps(v, s[0]);
          _mm256_storeu_ps(v + 8, s[1]);
          record(*capture, live, mask, i + p, v);
        }
        const __m256d c = _mm256_set1_pd(cur[i + p]);
        const __m256d c2d = _mm256_set1_pd(static_cast<double>(cur2[i + p]));
        for (int q = 0; q < 4; ++q) {
          // Widening is exact, so this is the float compare again, as a double mask.
          const __m256d m = _mm256_cmp_pd(widen(acc[p], q), c2d, _CMP_LT_OQ);
          part[q] = _mm256_add_pd(part[q], _mm256_and_pd(m, _mm256_sub_pd(c, widen(s, q))));
        }
      }
      i += np;
    }
    end_block<Cap>(part, total, blocks, lo, hi, n, capture, live);
  }
  for (int r = 0; r < 4; ++r) _mm256_storeu_pd(gain + 4 * r, total[r]);
}

bool use_avx() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         !std::getenv("CREPE_NO_AVX");
  return ok;
}
#endif

}  // namespace

template <typename T>
void tile_colsum(const T* xp, std::int64_t n, std::int64_t d, const T* cand, double* colsum,
                 T* max_d2, const RowSums* range, T* d2) {
#ifdef CREPE_HAVE_AVX_BUILD
  if (use_avx()) return colsum_avx(xp, n, d, cand, colsum, max_d2, range, d2);
#endif
  colsum_generic(xp, n, d, cand, colsum, max_d2, range, d2);
}

template <typename T>
void tile_gain(const T* xp, std::int64_t n, std::int64_t d, const T* cand, const double* cur,
               const T* cur2, double* gain, TileCapture<T>* capture, const PointBlocks* blocks,
               RowGains<T>* rows, const T* d2) {
#ifdef CREPE_HAVE_AVX_BUILD
  if (use_avx())
    return capture ? gain_avx<true>(xp, n, d, cand, cur, cur2, gain, capture, blocks, rows, d2)
                   : gain_avx<false>(xp, n, d, cand, cur, cur2, gain, capture, blocks, rows, d2);
#endif
  if (capture) return gain_generic<true>(xp, n, d, cand, cur, cur2, gain, capture, blocks, rows, d2);
  gain_generic<false>(xp, n, d, cand, cur, cur2, gain, capture, blocks, rows, d2);
}

#define CREPE_INSTANTIATE(T)                                                                 \
  template void pack_tile<T>(const T*, std::int64_t, std::int64_t, const std::int64_t*, int, \
                             T*);                                                            \
  template void tile_colsum<T>(const T*, std::int64_t, std::int64_t, const T*, double*, T*,    \
                               const RowSums*, T*);                                          \
  template void tile_gain<T>(const T*, std::int64_t, std::int64_t, const T*, const double*,  \
                             const T*, double*, TileCapture<T>*, const PointBlocks*,     \
                             RowGains<T>*, const T*);
CREPE_INSTANTIATE(float)
CREPE_INSTANTIATE(double)
#undef CREPE_INSTANTIATE

}  // namespace crepe
