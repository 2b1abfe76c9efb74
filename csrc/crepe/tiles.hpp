// SIMD kernels over a tile of kTile candidates against all n points of a class.
// Lanes are candidates: each lane sums its own terms over points in the
// canonical blocked order (facility_location.hpp), so a tile computes exactly
// the numbers a one-candidate-at-a-time loop would. T (float or double) is the
// precision of the distance arithmetic; sums are always double. An AVX2+FMA
// build is chosen at run time when the CPU has it; both builds round
// identically (the SIMD one uses FMA only as an exactly rounded subtraction).
//
// The class matrix xp is stored in panels of kPanel points (panel_at): a
// kernel step reads a few consecutive points of one panel, so the points
// arrive as one contiguous stream for any d, and a tile's kTile x d
// candidates are the only other data it touches.
#pragma once

#include <cstdint>
#include <vector>

namespace crepe {

inline constexpr int kTile = 16;

/// Points per panel of the class matrix layout.
inline constexpr int kPanel = 8;

/// Entries of a class matrix of n points in panels: whole panels, the last
/// one padded with zero points.
inline std::int64_t panel_entries(std::int64_t n, std::int64_t d) {
  return (n + kPanel - 1) / kPanel * kPanel * d;
}

/// Where coordinate k of point i lives in the panel layout.
inline std::int64_t panel_at(std::int64_t i, std::int64_t k, std::int64_t d) {
  return i / kPanel * (kPanel * d) + k * kPanel + i % kPanel;
}

/// Packs candidates idx[0..w) (w <= kTile) of the panel-layout class matrix
/// xp into cand (d, kTile); lanes past w repeat idx[0].
template <typename T>
void pack_tile(const T* xp, std::int64_t n, std::int64_t d, const std::int64_t* idx, int w,
               T* cand);

/// Points [first, last) of a class (first a multiple of kBlock) and, with
/// rows, their sums over the tile's first w lanes: rows[i - first] gets
/// d(x_i, cand_0), then d(x_i, cand_1), ... added one after another (the
/// row direction of a symmetric pass: point i's canonical sum over candidates
/// as points).
struct RowSums {
  std::int64_t first, last;
  int w;
  double* rows;
};

/// colsum[l] = sum_i d(x_i, cand_l) (blocked order, double); *max_d2 = largest
/// squared distance over lanes and points. O(n d kTile). With `range`, only
/// its points, and its row sums when range->rows is set; with `d2` (and
/// `range`), also the squared distances, d2[(i - first) * kBlock + l].
template <typename T>
void tile_colsum(const T* xp, std::int64_t n, std::int64_t d, const T* cand, double* colsum,
                 T* max_d2, const RowSums* range = nullptr, T* d2 = nullptr);

/// A point i of a class and its distance to some candidate.
template <typename T>
struct PointDist {
  std::int32_t i;
  T dist;
};

/// Where tile_gain records each lane's gaining points: lane l's go to
/// out[l * cap ...] in ascending point order. count[l] is the number recorded;
/// the caller sets it to 0 to record lane l or to cap + 1 to skip it, and the
/// kernel sets it to cap + 1 when lane l has more than cap.
template <typename T>
struct TileCapture {
  std::int64_t cap;
  PointDist<T>* out;
  std::int64_t count[kTile];
  /// Stop recording lanes whose rate so far forecasts more than 2 cap points
  /// over the whole class (off when the caller records one block at a time).
  bool forecast = true;
};

/// The row direction of a symmetric gain pass: the tile's lanes [0, w) are
/// points lane_idx[l] of the class (with their own cur and cur2), and each
/// point i of the run is a candidate. rows[i - first] gets
/// cur_e - d(x_i, x_e) for each lane e with d^2 < cur2_e, lane after lane;
/// with lists, (e, d) also goes to lists[i - first] while it holds at most
/// cap entries (so one holding cap + 1 has overflowed).
template <typename T>
struct RowGains {
  int w;
  const std::int64_t* lane_idx;
  double* rows;
  std::vector<PointDist<T>>* lists;
  std::int64_t cap;
};

/// A run of whole summation blocks, points [first, last) with first a multiple
/// of kBlock, whose per-block partial sums go to parts: kTile per block, in
/// block order. Adding them in order from 0.0 gives the full-range sum bit for
/// bit, so disjoint runs can be evaluated on different threads.
struct PointBlocks {
  std::int64_t first, last;
  double* parts;
};

/// gain[l] = sum_i max(0, cur_i - d(x_i, cand_l)) (blocked order, double),
/// where cur_i = sqrt(cur2_i) computed in T. O(n d kTile); sqrts are skipped
/// where no lane gains. With `capture`, also records (i, d(x_i, cand_l)) for
/// every i where d^2 < cur2_i: every point with a non-zero term (n < 2^31).
/// With `blocks`, only its points, sum over them into gain, partials into parts.
/// With `rows` (and `blocks`), also the row direction for the run's points.
/// With `d2` (and `blocks`), the squared distances are read from
/// d2[(i - first) * kBlock + l] (as tile_colsum wrote them) instead of
/// computed: O(n kTile).
template <typename T>
void tile_gain(const T* xp, std::int64_t n, std::int64_t d, const T* cand, const double* cur,
               const T* cur2, double* gain, TileCapture<T>* capture = nullptr,
               const PointBlocks* blocks = nullptr, RowGains<T>* rows = nullptr,
               const T* d2 = nullptr);

}  // namespace crepe
