// SIMD kernels over a tile of kTile candidates against all n points of a class.
// Lanes are candidates: each lane sums its own terms over points in the
// canonical blocked order (facility_location.hpp), so a tile computes exactly
// the numbers a one-candidate-at-a-time loop would. An AVX build is chosen at
// run time when the CPU has it; both builds round identically (no FMA).
#pragma once

#include <cstdint>

namespace crepe {

inline constexpr int kTile = 16;

/// Packs candidates idx[0..w) (w <= kTile) of the dim-major class matrix xt
/// (d, n) into cand (d, kTile); lanes past w repeat idx[0].
void pack_tile(const double* xt, std::int64_t n, std::int64_t d, const std::int64_t* idx, int w,
               double* cand);

/// colsum[l] = sum_i d(x_i, cand_l) (blocked order); *max_d2 = max over lanes
/// and points of the squared distance. O(n d kTile).
void tile_colsum(const double* xt, std::int64_t n, std::int64_t d, const double* cand,
                 double* colsum, double* max_d2);

/// gain[l] = sum_i max(0, cur_i - d(x_i, cand_l)) (blocked order), where
/// cur_i = sqrt(cur2_i). O(n d kTile); the sqrt is skipped where no lane gains.
void tile_gain(const double* xt, std::int64_t n, std::int64_t d, const double* cand,
               const double* cur, const double* cur2, double* gain);

}  // namespace crepe
