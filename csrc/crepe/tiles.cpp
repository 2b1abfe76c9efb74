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

void pack_tile(const double* xt, std::int64_t n, std::int64_t d, const std::int64_t* idx, int w,
               double* cand) {
  for (std::int64_t k = 0; k < d; ++k)
    for (int l = 0; l < kTile; ++l) cand[k * kTile + l] = xt[k * n + idx[l < w ? l : 0]];
}

namespace {

// ---- portable build: one lane at a time, same operations in the same order.

void colsum_generic(const double* xt, std::int64_t n, std::int64_t d, const double* cand,
                    double* colsum, double* max_d2) {
  double total[kTile] = {}, mx = 0.0;
  for (std::int64_t lo = 0; lo < n; lo += kBlock) {
    double part[kTile] = {};
    for (std::int64_t i = lo; i < std::min(n, lo + kBlock); ++i) {
      double d2[kTile] = {};
      for (std::int64_t k = 0; k < d; ++k) {
        const double xi = xt[k * n + i];
        for (int l = 0; l < kTile; ++l) {
          const double t = cand[k * kTile + l] - xi;
          d2[l] += t * t;
        }
      }
      for (int l = 0; l < kTile; ++l) {
        part[l] += std::sqrt(d2[l]);
        mx = std::max(mx, d2[l]);
      }
    }
    for (int l = 0; l < kTile; ++l) total[l] += part[l];
  }
  std::copy(total, total + kTile, colsum);
  *max_d2 = mx;
}

void gain_generic(const double* xt, std::int64_t n, std::int64_t d, const double* cand,
                  const double* cur, const double* cur2, double* gain) {
  double total[kTile] = {};
  for (std::int64_t lo = 0; lo < n; lo += kBlock) {
    double part[kTile] = {};
    for (std::int64_t i = lo; i < std::min(n, lo + kBlock); ++i) {
      double d2[kTile] = {};
      for (std::int64_t k = 0; k < d; ++k) {
        const double xi = xt[k * n + i];
        for (int l = 0; l < kTile; ++l) {
          const double t = cand[k * kTile + l] - xi;
          d2[l] += t * t;
        }
      }
      // d2 >= cur2 implies sqrt(d2) >= cur: the term is zero, skip its sqrt.
      for (int l = 0; l < kTile; ++l)
        if (d2[l] < cur2[i]) part[l] += cur[i] - std::sqrt(d2[l]);
    }
    for (int l = 0; l < kTile; ++l) total[l] += part[l];
  }
  std::copy(total, total + kTile, gain);
}

#ifdef CREPE_HAVE_AVX_BUILD
// ---- AVX build: 4 registers of 4 lanes. mul then add, never fused.

constexpr int kRegs = kTile / 4;

__attribute__((target("avx"))) inline void tile_d2(const double* xt, std::int64_t n,
                                                    std::int64_t d, const double* cand,
                                                    std::int64_t i, __m256d* acc) {
  for (int r = 0; r < kRegs; ++r) acc[r] = _mm256_setzero_pd();
  for (std::int64_t k = 0; k < d; ++k) {
    const __m256d xi = _mm256_set1_pd(xt[k * n + i]);
    for (int r = 0; r < kRegs; ++r) {
      const __m256d t = _mm256_sub_pd(_mm256_loadu_pd(cand + k * kTile + 4 * r), xi);
      acc[r] = _mm256_add_pd(acc[r], _mm256_mul_pd(t, t));
    }
  }
}

__attribute__((target("avx"))) void colsum_avx(const double* xt, std::int64_t n, std::int64_t d,
                                                const double* cand, double* colsum,
                                                double* max_d2) {
  __m256d total[kRegs], mx = _mm256_setzero_pd();
  for (int r = 0; r < kRegs; ++r) total[r] = _mm256_setzero_pd();
  for (std::int64_t lo = 0; lo < n; lo += kBlock) {
    __m256d part[kRegs];
    for (int r = 0; r < kRegs; ++r) part[r] = _mm256_setzero_pd();
    for (std::int64_t i = lo; i < std::min(n, lo + kBlock); ++i) {
      __m256d acc[kRegs];
      tile_d2(xt, n, d, cand, i, acc);
      for (int r = 0; r < kRegs; ++r) {
        part[r] = _mm256_add_pd(part[r], _mm256_sqrt_pd(acc[r]));
        mx = _mm256_max_pd(mx, acc[r]);
      }
    }
    for (int r = 0; r < kRegs; ++r) total[r] = _mm256_add_pd(total[r], part[r]);
  }
  for (int r = 0; r < kRegs; ++r) _mm256_storeu_pd(colsum + 4 * r, total[r]);
  double m[4];
  _mm256_storeu_pd(m, mx);
  *max_d2 = std::max(std::max(m[0], m[1]), std::max(m[2], m[3]));
}

__attribute__((target("avx"))) void gain_avx(const double* xt, std::int64_t n, std::int64_t d,
                                              const double* cand, const double* cur,
                                              const double* cur2, double* gain) {
  __m256d total[kRegs];
  for (int r = 0; r < kRegs; ++r) total[r] = _mm256_setzero_pd();
  for (std::int64_t lo = 0; lo < n; lo += kBlock) {
    __m256d part[kRegs];
    for (int r = 0; r < kRegs; ++r) part[r] = _mm256_setzero_pd();
    for (std::int64_t i = lo; i < std::min(n, lo + kBlock); ++i) {
      __m256d acc[kRegs], lt[kRegs];
      tile_d2(xt, n, d, cand, i, acc);
      const __m256d c2 = _mm256_set1_pd(cur2[i]);
      int any = 0;
      for (int r = 0; r < kRegs; ++r) {
        lt[r] = _mm256_cmp_pd(acc[r], c2, _CMP_LT_OQ);
        any |= _mm256_movemask_pd(lt[r]);
      }
      if (!any) continue;  // no lane gains from point i: all terms are zero
      const __m256d c = _mm256_set1_pd(cur[i]);
      // Lanes with d2 < cur2 add cur - sqrt(d2) >= 0; the others add +0.0,
      // which leaves the partial sum unchanged, as in the generic build.
      for (int r = 0; r < kRegs; ++r)
        part[r] = _mm256_add_pd(part[r],
                                _mm256_and_pd(lt[r], _mm256_sub_pd(c, _mm256_sqrt_pd(acc[r]))));
    }
    for (int r = 0; r < kRegs; ++r) total[r] = _mm256_add_pd(total[r], part[r]);
  }
  for (int r = 0; r < kRegs; ++r) _mm256_storeu_pd(gain + 4 * r, total[r]);
}

bool use_avx() {
  static const bool ok = __builtin_cpu_supports("avx") && !std::getenv("CREPE_NO_AVX");
  return ok;
}
#endif

}  // namespace

void tile_colsum(const double* xt, std::int64_t n, std::int64_t d, const double* cand,
                 double* colsum, double* max_d2) {
#ifdef CREPE_HAVE_AVX_BUILD
  if (use_avx()) return colsum_avx(xt, n, d, cand, colsum, max_d2);
#endif
  colsum_generic(xt, n, d, cand, colsum, max_d2);
}

void tile_gain(const double* xt, std::int64_t n, std::int64_t d, const double* cand,
               const double* cur, const double* cur2, double* gain) {
#ifdef CREPE_HAVE_AVX_BUILD
  if (use_avx()) return gain_avx(xt, n, d, cand, cur, cur2, gain);
#endif
  gain_generic(xt, n, d, cand, cur, cur2, gain);
}

}  // namespace crepe
