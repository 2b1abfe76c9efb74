// The first pick (phase 2 of the map in facility_location.cpp): the medoid,
// D, and the column sums they come from. Three ways to the same numbers:
//   * bounded_medoid (classes of kBoundedMedoidPoints points and 8 d or more,
//     unless step 1 is to read this pass's distances): moment-based lower
//     bounds on every column sum (colsum_lower_bounds), exact column sums
//     only for the candidates the bounds do not rule out, D by
//     max_d2_bounded;
//   * symmetric_first_pass (d >= kSymmetricDims, more than one block): all
//     column sums over half the matrix, keeping the squared distances in d2_
//     for step 1 when run() allocated it;
//   * colsums_of over all candidates: all column sums, by tiles.
#include "class_solver.hpp"
#include "tiles.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace crepe {

// From bounds (bounded_medoid) for classes of at least
// kBoundedMedoidPoints points and 8 d, unless step 1 is to read this pass's
// distances; else from all column sums (half the matrix for wide points:
// symmetric_first_pass).
template <typename T>
auto ClassSolver<T>::medoid() -> Medoid {
  if (!d2_ && n_ >= kBoundedMedoidPoints && 8 * d_ <= n_) return bounded_medoid();
  std::vector<double> colsum(n_);
  double D;
  if (d_ >= kSymmetricDims && n_ > kBlock) {
    D = symmetric_first_pass(colsum.data());
  } else {
    std::vector<std::int64_t> all(n_);
    for (std::int64_t e = 0; e < n_; ++e) all[e] = e;
    T mx;
    colsums_of(all.data(), n_, colsum.data(), &mx);
    D = static_cast<double>(std::sqrt(mx));
  }
  const std::int64_t e = std::min_element(colsum.begin(), colsum.end()) - colsum.begin();
  return {e, colsum[e], D};
}

// out[j] = column sum of candidate cands[j] (canonical order), by tiles;
// *max_d2 = the largest squared distance from them to any point.
template <typename T>
void ClassSolver<T>::colsums_of(const std::int64_t* cands, std::int64_t m, double* out, T* max_d2) {
  const std::int64_t ntiles = (m + kTile - 1) / kTile;
  std::vector<T> tile_max(ntiles, T(0));
#pragma omp parallel num_threads(threads_) if (threads_ > 1 && ntiles > 1)
  {
    std::vector<T> cand(d_ * kTile);
    double sums[kTile];
#pragma omp for schedule(dynamic, 4)
    for (std::int64_t t = 0; t < ntiles; ++t) {
      const int w = static_cast<int>(std::min<std::int64_t>(kTile, m - t * kTile));
      pack_tile(xp_.data(), n_, d_, cands + t * kTile, w, cand.data());
      tile_colsum(xp_.data(), n_, d_, cand.data(), sums, &tile_max[t]);
      std::copy(sums, sums + w, out + t * kTile);
    }
  }
  *max_d2 = *std::max_element(tile_max.begin(), tile_max.end());
}

// bounded_medoid's L(e) for every candidate e, with its rounding margins:
// at most e's computed column sum (also column_sum_lower_bounds, for
// tests); and r_i = |x_i - centroid| into r.
template <typename T>
std::vector<double> ClassSolver<T>::colsum_lower_bounds(std::vector<double>& r) {
  const std::int64_t n = n_, d = d_;
  const double nd = static_cast<double>(n);
  std::vector<double> c(d, 0.0);
  r.assign(n, 0.0);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t k = 0; k < d; ++k) c[k] += static_cast<double>(xp_[panel_at(i, k, d)]);
  for (double& v : c) v /= nd;
  // y_i = x_i - c, r_i = |y_i|; moments P_p = sum r_i^p, V1 = sum y_i,
  // V3 = sum r_i^2 y_i, M = sum y_i y_i^T (lower triangle), per thread, then added.
  auto centred = [&](std::int64_t i, double* y) {
    double s2 = 0.0;
    for (std::int64_t k = 0; k < d; ++k) {
      y[k] = static_cast<double>(xp_[panel_at(i, k, d)]) - c[k];
      s2 += y[k] * y[k];
    }
    return s2;
  };
  const std::size_t nm = static_cast<std::size_t>(2 * d + d * d);
  std::vector<double> mom(4 + nm, 0.0);  // P1..P4, V1, V3, M
#pragma omp parallel num_threads(threads_) if (threads_ > 1)
  {
    std::vector<double> mine(4 + nm, 0.0), y(d);
    double* V1 = mine.data() + 4;
    double* V3 = V1 + d;
    double* M = V3 + d;
#pragma omp for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) {
      const double s2 = centred(i, y.data());
      r[i] = std::sqrt(s2);
      mine[0] += r[i];
      mine[1] += s2;
      mine[2] += s2 * r[i];
      mine[3] += s2 * s2;
      for (std::int64_t k = 0; k < d; ++k) {
        V1[k] += y[k];
        V3[k] += s2 * y[k];
        for (std::int64_t l = 0; l <= k; ++l) M[k * d + l] += y[k] * y[l];
      }
    }
#pragma omp critical(crepe_moments)
    for (std::size_t j = 0; j < mine.size(); ++j) mom[j] += mine[j];
  }
  const double P1 = mom[0], P2 = mom[1], P3 = mom[2], P4 = mom[3];
  const double* V1 = mom.data() + 4;
  const double* V3 = V1 + d;
  const double* M = V3 + d;
  const double err = (8.0 * static_cast<double>(n + d) + 64.0) * kEps;
  const double shrink = 1.0 - (static_cast<double>(d) + 8.0) * kEpsT - (4.0 * nd + 64.0) * kEps;
  // Distances below sqrt(min normal of T) may underflow: up to that much each.
  const double slack = nd * 2.0 * std::sqrt(static_cast<double>(std::numeric_limits<T>::min()));
  std::vector<double> lower(n);
#pragma omp parallel num_threads(threads_) if (threads_ > 1)
  {
    std::vector<double> y(d);
#pragma omp for schedule(static)
    for (std::int64_t e = 0; e < n; ++e) {
      const double q = centred(e, y.data());
      double yV1 = 0, yV3 = 0, yMy = 0;
      for (std::int64_t k = 0; k < d; ++k) {
        yV1 += y[k] * V1[k];
        yV3 += y[k] * V3[k];
        double row = 0.0;
        for (std::int64_t l = 0; l < k; ++l) row += M[k * d + l] * y[l];
        yMy += y[k] * (2.0 * row + M[k * d + k] * y[k]);
      }
      const double A2 = P2 - 2.0 * yV1 + nd * q;
      const double A4 = P4 - 4.0 * yV3 + 4.0 * yMy + 2.0 * q * P2 - 4.0 * q * yV1 + nd * q * q;
      const double E2 = P2 + 2.0 * r[e] * P1 + nd * q;
      const double E4 = P4 + 4.0 * r[e] * P3 + 6.0 * q * P2 + 4.0 * q * r[e] * P1 + nd * q * q;
      const double a2 = A2 - err * E2, a4 = A4 + err * E4;
      const double v = a2 > 0.0 && a4 > 0.0 ? a2 * std::sqrt(a2 / a4) * shrink - slack : 0.0;
      lower[e] = std::isfinite(v) ? v : 0.0;  // overflow: no bound
    }
  }
  return lower;
}

// The medoid and D without the n^2 pass where the data allow, still
// exactly the numbers the pass gives. O(n d^2) for the bounds.
//
// Medoid. The column sum of e, S(e) = sum_i a_i with a_i = |x_i - x_e|,
// is at least L(e) = A2^{3/2} / A4^{1/2}, A2 = sum_i a_i^2, A4 = sum_i a_i^4
// (Hoelder: A2 <= S^{2/3} A4^{1/3}). A2 and A4 are polynomials in x_e whose
// coefficients are moments of the class (about its centroid), so L costs
// O(d^2) per candidate. Candidates are evaluated exactly, in tiles, in
// ascending order of L, until the next L exceeds the smallest column sum
// found: every candidate left has a larger one, so the argmin (and its
// lowest-index tie-break) is the full pass's. Where distances are
// concentrated (noise-like points) few candidates are evaluated; where
// they are not, all are, at the full pass's cost plus O(n d^2).
//
// D. |x_i - x_j| <= r_i + r_j, r = distance to the centroid. With q2 the
// largest squared distance of the rows of the two farthest-out points, a
// pair above q2 has both ends among the points with r_i + max r above
// sqrt(q2); D^2 is the largest over the pairs among them (and q2).
//
// Rounding: the bounds are computed in double from sums whose error is
// at most (n + d + small) eps times the same sums of absolute values
// (E2, E4 below: sum_i (r_i + r_e)^2 and ^4), and every computed distance
// is within (d / 2 + 3) epsT of exact; the margins below are several times
// both, so the pruning never drops a candidate or pair that the pass would
// have counted.
template <typename T>
auto ClassSolver<T>::bounded_medoid() -> Medoid {
  const std::int64_t n = n_;
  std::vector<double> r;
  const std::vector<double> lower = colsum_lower_bounds(r);
  std::vector<std::int64_t> order(n);
  for (std::int64_t e = 0; e < n; ++e) order[e] = e;
  std::sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
    return lower[a] < lower[b] || (lower[a] == lower[b] && a < b);
  });
  Medoid best{-1, 0.0, 0.0};
  T mx = T(0);
  const std::int64_t chunk = 4 * kTile * threads_;
  std::vector<double> sums(chunk);
  std::int64_t done = 0;
  while (done < n && (best.e < 0 || lower[order[done]] <= best.colsum)) {
    const std::int64_t m = std::min(chunk, n - done);
    T cmx;
    colsums_of(order.data() + done, m, sums.data(), &cmx);
    mx = std::max(mx, cmx);
    for (std::int64_t j = 0; j < m; ++j) {
      const std::int64_t e = order[done + j];
      if (best.e < 0 || sums[j] < best.colsum || (sums[j] == best.colsum && e < best.e))
        best = {e, sums[j], 0.0};
    }
    done += m;
  }
  best.D = static_cast<double>(std::sqrt(done == n ? mx : max_d2_bounded(r)));
  return best;
}

// The largest squared distance of the class (bounded_medoid's D), given r,
// each point's distance to the centroid.
template <typename T>
T ClassSolver<T>::max_d2_bounded(const std::vector<double>& r) {
  const std::int64_t n = n_, d = d_;
  T q2 = T(0);
  std::int64_t a = std::max_element(r.begin(), r.end()) - r.begin();
  for (int round = 0; round < 2; ++round) {  // the farthest-out point, then the farthest from it
    const T* d2 = dist2_from(a);
    const std::int64_t b = std::max_element(d2, d2 + n) - d2;
    q2 = std::max(q2, d2[b]);
    a = b;
  }
  const double R = *std::max_element(r.begin(), r.end());
  const double grow = 1.0 + (static_cast<double>(d) + 8.0) * kEps, growT = 1.0 + (static_cast<double>(d) + 8.0) * kEpsT;
  std::vector<std::int64_t> far;
  for (std::int64_t i = 0; i < n; ++i) {
    const double u = (r[i] + R) * grow;
    if (u * u * growT >= static_cast<double>(q2)) far.push_back(i);
  }
  // The pairs among `far`: their points in a panel-layout matrix of their own.
  const std::int64_t m = static_cast<std::int64_t>(far.size());
  std::vector<T> fp(static_cast<std::size_t>(panel_entries(m, d)), T(0));
  for (std::int64_t j = 0; j < m; ++j)
    for (std::int64_t k = 0; k < d; ++k) fp[panel_at(j, k, d)] = xp_[panel_at(far[j], k, d)];
  ClassSolver sub(std::move(fp), m, d, threads_, 0);
  std::vector<std::int64_t> all(m);
  for (std::int64_t j = 0; j < m; ++j) all[j] = j;
  std::vector<double> sums(m);
  T mx = T(0);
  if (m > 0) sub.colsums_of(all.data(), m, sums.data(), &mx);
  return std::max(q2, mx);
}

// first_pass from the block pairs (a, b), a <= b, only: d_ie = d_ei bit
// for bit ((u - v)^2 = (v - u)^2), so the pair's distances give block a's
// partials of the columns in block b and, as row sums, block b's partials
// of the columns in block a. With a ascending outside, every column still
// adds its block partials in block order: those of blocks < a arrived in
// earlier rounds, then the diagonal pair's, then the row sums of pairs
// (a, b > a) in b order. Each partial is itself sequential over its block
// (rows: over the candidates, tile after tile, lane after lane). Memory:
// one row buffer of kBlock per block, O(n).
template <typename T>
double ClassSolver<T>::symmetric_first_pass(double* colsum) {
  const std::int64_t nb = (n_ + kBlock - 1) / kBlock;
  std::vector<double> rows(static_cast<std::size_t>(nb * kBlock));
  std::vector<T> block_max(nb, T(0));
  std::fill(colsum, colsum + n_, 0.0);
  for (std::int64_t a = 0; a < nb; ++a) {
    const std::int64_t a0 = a * kBlock, a1 = std::min(n_, a0 + kBlock);
#pragma omp parallel num_threads(threads_) if (threads_ > 1 && nb - a > 1)
    {
      std::vector<T> cand(d_ * kTile);
      std::int64_t idx[kTile];
      double out[kTile];
#pragma omp for schedule(dynamic, 1)
      for (std::int64_t b = a; b < nb; ++b) {
        const std::int64_t b0 = b * kBlock, b1 = std::min(n_, b0 + kBlock);
        double* row = rows.data() + b * kBlock;
        std::fill(row, row + kBlock, 0.0);
        T mx = T(0);
        for (std::int64_t t0 = b0; t0 < b1; t0 += kTile) {
          const int w = static_cast<int>(std::min<std::int64_t>(kTile, b1 - t0));
          for (int l = 0; l < w; ++l) idx[l] = t0 + l;
          pack_tile(xp_.data(), n_, d_, idx, w, cand.data());
          const RowSums range{a0, a1, w, b > a ? row : nullptr};
          T tile_mx;
          tile_colsum(xp_.data(), n_, d_, cand.data(), out, &tile_mx, &range,
                      d2_ ? pair_d2(a, b) + (t0 - b0) : nullptr);
          mx = std::max(mx, tile_mx);
          for (int l = 0; l < w; ++l) colsum[t0 + l] += out[l];  // block a's partial
        }
        block_max[b] = std::max(block_max[b], mx);
      }
    }
    for (std::int64_t i = a0; i < a1; ++i)
      for (std::int64_t b = a + 1; b < nb; ++b) colsum[i] += rows[b * kBlock + (i - a0)];
  }
  return static_cast<double>(std::sqrt(*std::max_element(block_max.begin(), block_max.end())));
}

// What the other files call.
#define CREPE_INSTANTIATE(T)                                                          \
  template auto ClassSolver<T>::medoid() -> Medoid;                                   \
  template std::vector<double> ClassSolver<T>::colsum_lower_bounds(std::vector<double>&);
CREPE_INSTANTIATE(float)
CREPE_INSTANTIATE(double)
#undef CREPE_INSTANTIATE

}  // namespace crepe
