#include "facility_location.hpp"

#include "contract.hpp"
#include "tiles.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __linux__
#include <sys/mman.h>
#endif

namespace crepe {

int resolve_threads(int threads) {
#ifdef _OPENMP
  return threads > 0 ? threads : omp_get_max_threads();
#else
  (void)threads;
  return 1;
#endif
}

namespace {

// This thread's number in its OpenMP team and the team's size (0 and 1
// without OpenMP).
int thread_num() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// out[i] = d(x_i, xe)^2 for all n points of the panel-layout matrix xp
// (tiles.hpp); out has room for whole panels.
template <typename T>
void dist2_all(const T* xp, std::int64_t n, std::int64_t d, const T* xe, T* out) {
  for (std::int64_t p = 0; p < n; p += kPanel) {
    const T* x = xp + panel_at(p, 0, d);
    T acc[kPanel] = {};
    for (std::int64_t k = 0; k < d; ++k)
      for (int j = 0; j < kPanel; ++j) {
        const T t = x[k * kPanel + j] - xe[k];
        acc[j] += t * t;
      }
    std::copy(acc, acc + kPanel, out + p);
  }
}

// Rows rows[0..n) of the row-major (., d) matrix X (rows = nullptr: rows
// 0..n-1) in the panel layout (tiles.hpp).
template <typename T>
std::vector<T> panels_of(const T* X, std::int64_t d, std::int64_t n, const std::int64_t* rows) {
  std::vector<T> xp(static_cast<std::size_t>(panel_entries(n, d)), T(0));
  for (std::int64_t j = 0; j < n; ++j)
    for (std::int64_t k = 0; k < d; ++k) xp[panel_at(j, k, d)] = X[(rows ? rows[j] : j) * d + k];
  return xp;
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// Uninitialised memory for `bytes`, 2 MiB-aligned, on Linux backed by huge
// pages where the kernel grants them: one fault per 2 MiB instead of per
// 4 KiB (writing 75 MB of fresh 4 KiB pages cost a third of the pass).
template <typename T>
std::unique_ptr<T[], FreeDeleter> huge_alloc(std::int64_t bytes) {
  constexpr std::size_t kHuge = std::size_t{2} << 20;
  const std::size_t size = (static_cast<std::size_t>(bytes) + kHuge - 1) / kHuge * kHuge;
  void* p = std::aligned_alloc(kHuge, size);
  if (!p) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  madvise(p, size, MADV_HUGEPAGE);  // advice only: small pages if refused
#endif
  return std::unique_ptr<T[], FreeDeleter>(static_cast<T*>(p));
}

// Greedy facility location for one class, distances in T. Invariants after
// each pick: cur[i] = double(sqrt_T(cur2[i])) = distance of i to its nearest
// pick, assign[i] = the position (in greedy order) of that pick, earliest on ties.
template <typename T>
class ClassSolver {
 public:
  // list_bytes: memory the lazy greedy may spend on gain lists.
  // xp: the class's points in the panel layout (tiles.hpp).
  ClassSolver(std::vector<T> xp, std::int64_t n, std::int64_t d, int threads,
              std::int64_t list_bytes)
      : xp_(std::move(xp)), n_(n), d_(d), threads_(threads), list_bytes_(list_bytes) {}

  void run(std::int64_t k, Method method, std::int64_t* picks, std::int64_t* weights,
           double* gains, double* objective) {
    // Room for the medoid pass to keep its squared distances for step 1,
    // the only reader (lazy, k > 1, symmetric); where step 1 is symmetric,
    // so is the medoid pass that fills it.
    if (method == Method::Lazy && k > 1 && symmetric_step1_applies() &&
        d2_bytes() <= list_bytes_ / 4 * 3)
      d2_ = huge_alloc<T>(d2_bytes());
    const Medoid m = medoid();
    const double D = m.D;
    cur_.assign(n_, 0.0);
    cur2_.assign(n_, T(0));
    assign_.assign(n_, 0);
    selected_.assign(n_, 0);
    add_pick(m.e, 0);
    picks[0] = m.e;
    gains[0] = static_cast<double>(n_) * D - m.colsum;
    if (method == Method::Lazy) {
      if (k > 1) lazy(k, picks, gains);
    } else {
      naive(k, picks, gains);
    }
    for (std::int64_t t = 0; t < k; ++t) weights[t] = 0;
    for (std::int64_t i = 0; i < n_; ++i) ++weights[assign_[i]];
    double total = 0.0;  // F(S) = sum_i (D - cur_i), canonical blocked order
    for (std::int64_t lo = 0; lo < n_; lo += kBlock) {
      double part = 0.0;
      for (std::int64_t i = lo; i < std::min(n_, lo + kBlock); ++i) part += D - cur_[i];
      total += part;
    }
    *objective = total;
  }

 private:
  // The first pick: the medoid e (smallest column sum of the distance
  // matrix, lowest index on ties), its column sum, and D.
  struct Medoid {
    std::int64_t e;
    double colsum, D;
  };

  // From bounds (bounded_medoid) for classes of at least
  // kBoundedMedoidPoints points and 8 d, unless step 1 is to read this pass's
  // distances; else from all column sums (half the matrix for wide points:
  // symmetric_first_pass).
  Medoid medoid() {
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
  void colsums_of(const std::int64_t* cands, std::int64_t m, double* out, T* max_d2) {
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

 public:
  // bounded_medoid's L(e) for every candidate e, with its rounding margins:
  // at most e's computed column sum (also column_sum_lower_bounds, for
  // tests); and r_i = |x_i - centroid| into r.
  std::vector<double> colsum_lower_bounds(std::vector<double>& r) {
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

 private:
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
  Medoid bounded_medoid() {
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
  T max_d2_bounded(const std::vector<double>& r) {
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
  double symmetric_first_pass(double* colsum) {
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

  // Whether step 1 runs over half the distance matrix, as the medoid's pass.
  bool symmetric_step1_applies() const { return d_ >= kSymmetricGainDims && n_ > kBlock; }

  // The medoid's pass may keep the squared distances of its block pairs for
  // step 1, which then reads them instead of computing them again: kBlock x
  // kBlock per pair (a, b), a <= b, row i - a0, column e - b0. Their bytes,
  // as huge_alloc allocates them (whole 2 MiB pages).
  std::int64_t d2_bytes() const {
    const std::int64_t nb = (n_ + kBlock - 1) / kBlock, huge = std::int64_t{2} << 20;
    const std::int64_t bytes = nb * (nb + 1) / 2 * kBlock * kBlock * static_cast<std::int64_t>(sizeof(T));
    return (bytes + huge - 1) / huge * huge;
  }

  T* pair_d2(std::int64_t a, std::int64_t b) const {
    const std::int64_t nb = (n_ + kBlock - 1) / kBlock;
    return d2_.get() + (a * nb - a * (a - 1) / 2 + (b - a)) * kBlock * kBlock;
  }

  // A candidate's gaining points, (i, d_ie) in ascending i, recorded when a
  // tile evaluated it. cur only shrinks, so no point outside the list can gain
  // from e again, and every later gain of e is a sum over its list alone.
  using GainList = std::vector<PointDist<T>>;

  // Lists are kept for candidates with at most n/4 gaining points (longer
  // ones are cheaper to evaluate in a tile), within list_bytes_ in all.
  void init_lists() {
    lists_.resize(n_);
    listed_.assign(n_, 0);
    split_ = threads_ > 1 && n_ >= kSplitPoints ? threads_ : 1;
    // The capture buffers (kTile lanes of list_cap_ per thread: step 1's
    // pass runs threads_ tiles at once, evaluate_tile split_ <= threads_
    // runs) come out of the same budget, at most half of it; the lists get
    // the rest.
    // While step 1 runs, the kept distances hold part of the budget.
    const std::int64_t entries = (list_bytes_ - (d2_ ? d2_bytes() : 0)) /
                                 static_cast<std::int64_t>(sizeof(PointDist<T>));
    list_cap_ = std::min(std::max<std::int64_t>(kTile, n_ / 4), entries / (2 * kTile * threads_));
    const bool fits = n_ <= std::numeric_limits<std::int32_t>::max() && list_cap_ >= kTile;
    list_room_ = fits ? entries - kTile * threads_ * list_cap_ : 0;
    if (fits) capture_bufs_.assign(threads_, std::vector<PointDist<T>>(kTile * list_cap_));
  }

  // A capture ready to record lanes [0, w) of a tile into buffer b.
  TileCapture<T> start_capture(int b, int w) {
    TileCapture<T> c{list_cap_, capture_bufs_[b].data(), {}};
    for (int l = 0; l < kTile; ++l) c.count[l] = l < w ? 0 : list_cap_ + 1;
    return c;
  }

  // Keeps, as the gain lists of cands[0..w), what `runs` captures (runs of
  // point blocks in block order) recorded of them: every lane that none
  // overflowed, while room lasts.
  void keep_lists(const std::int64_t* cands, int w, const TileCapture<T>* caps, int runs) {
    for (int l = 0; l < w; ++l) {
      std::int64_t m = 0;
      for (int r = 0; r < runs; ++r) m = caps[r].count[l] > list_cap_ ? list_cap_ + 1 : m + caps[r].count[l];
      if (m > list_cap_ || m > list_room_) continue;
      GainList& L = lists_[cands[l]];
      L.reserve(m);
      for (int r = 0; r < runs; ++r)  // runs in block order: L stays sorted
        L.insert(L.end(), caps[r].out + l * list_cap_, caps[r].out + l * list_cap_ + caps[r].count[l]);
      list_room_ -= static_cast<std::int64_t>(L.capacity());
      listed_[cands[l]] = 1;
    }
  }

  void drop_list(std::int64_t e) {
    list_room_ += static_cast<std::int64_t>(lists_[e].capacity());
    lists_[e] = GainList{};
    listed_[e] = 0;
  }

  // gain[j] = current marginal gain of cands[j], by tiles, in parallel when
  // there are enough of them to repay waking the threads. Each gain is summed
  // in the canonical order, so it does not depend on the batching. With
  // `lists` (after init_lists), also keeps the gain lists of the candidates
  // with few gaining points, so that their next evaluations need no tile.
  void evaluate(const std::int64_t* cands, std::int64_t m, double* gain, bool lists = false) {
    const std::int64_t ntiles = (m + kTile - 1) / kTile;
    const bool record = lists && !capture_bufs_.empty();
#pragma omp parallel num_threads(threads_) if (threads_ > 1 && ntiles >= 8 * threads_)
    {
      const int me = thread_num();
      std::vector<T> cand(d_ * kTile);
      double out[kTile];
      TileCapture<T> capture{};
#pragma omp for schedule(dynamic, 1)
      for (std::int64_t t = 0; t < ntiles; ++t) {
        const int w = static_cast<int>(std::min<std::int64_t>(kTile, m - t * kTile));
        pack_tile(xp_.data(), n_, d_, cands + t * kTile, w, cand.data());
        // Which lists are kept depends on the threads' timing once room runs
        // short; the gains never do.
        bool rec = false;
        if (record) {
#pragma omp critical(crepe_lists)
          rec = list_room_ >= list_cap_;
        }
        if (rec) capture = start_capture(me, w);
        tile_gain(xp_.data(), n_, d_, cand.data(), cur_.data(), cur2_.data(), out,
                  rec ? &capture : nullptr);
        std::copy(out, out + w, gain + t * kTile);
        if (rec) {
#pragma omp critical(crepe_lists)
          keep_lists(cands + t * kTile, w, &capture, 1);
        }
      }
    }
  }

  // The same for at most one tile of candidates, keeping the gaining points
  // of those with few as their lists. The points are split into runs of
  // whole blocks over split_ threads (only for classes large enough to repay
  // waking them: with OMP_WAIT_POLICY=PASSIVE a wake-up costs more than a
  // small tile), each run recording its own part of every list.
  void evaluate_tile(const std::vector<std::int64_t>& cands, double* gain) {
    const int w = static_cast<int>(cands.size());
    cand_.resize(d_ * kTile);
    pack_tile(xp_.data(), n_, d_, cands.data(), w, cand_.data());
    const bool record = !capture_bufs_.empty() && list_room_ >= list_cap_;
    const std::int64_t nblocks = (n_ + kBlock - 1) / kBlock;
    captures_.resize(split_);
    if (split_ > 1) parts_.resize(nblocks * kTile);
#pragma omp parallel num_threads(split_) if (split_ > 1)
    {
      const int me = thread_num(), team = team_size();
      // OpenMP may start fewer threads than asked: every run is still done.
      for (int r = me; r < split_; r += team) {
        TileCapture<T>& capture = captures_[r];
        if (record) capture = start_capture(r, w);
        const std::int64_t b0 = nblocks * r / split_, b1 = nblocks * (r + 1) / split_;
        const PointBlocks run{b0 * kBlock, std::min(n_, b1 * kBlock), parts_.data() + b0 * kTile};
        double g[kTile];
        tile_gain(xp_.data(), n_, d_, cand_.data(), cur_.data(), cur2_.data(),
                  split_ > 1 ? g : gain, record ? &capture : nullptr, split_ > 1 ? &run : nullptr);
      }
    }
    if (split_ > 1)
      for (int l = 0; l < kTile; ++l) {  // the blocks' partials in block order, as one run adds them
        gain[l] = 0.0;
        for (std::int64_t b = 0; b < nblocks; ++b) gain[l] += parts_[b * kTile + l];
      }
    if (record) keep_lists(cands.data(), w, captures_.data(), split_);
  }

  // Step 1's gains of all n points as candidates (into gain) over the block
  // pairs (a, b), a <= b, as symmetric_first_pass does for the column sums:
  // pair (a, b) gives block a's partials of the gains of b's candidates
  // (points of a gaining, cur of a) and, by rows, block b's partials of the
  // gains of a's candidates (points of b gaining, cur of b). With lists, the
  // gain lists are assembled on the way, in point order: a candidate of block
  // b gets its points of blocks <= b from the columns of rounds 0..b, then
  // those of blocks > b from round b's rows, which each thread collects over
  // its own contiguous run of b (runs in thread order) and which are added
  // in thread order. Lists stop at list_cap_ points; room is charged as they
  // grow.
  void symmetric_step1(double* gain, bool lists) {
    const std::int64_t nb = (n_ + kBlock - 1) / kBlock;
    std::vector<double> rows(static_cast<std::size_t>(nb * kBlock));
    std::fill(gain, gain + n_, 0.0);
    lists = lists && !capture_bufs_.empty();
    // Each thread's row lists for the kBlock candidates of the current round:
    // transient, charged to the room up front, at most a quarter of it.
    std::int64_t row_cap = 0;
    if (lists) {
      row_cap = std::min(list_cap_, list_room_ / (4 * kBlock * threads_));
      if (row_cap < kTile) lists = false;
    }
    if (lists) list_room_ -= row_cap * kBlock * threads_;
    std::vector<char> open(lists ? n_ : 0, 1);  // still collecting its list
    std::vector<std::vector<GainList>> row_lists(lists ? threads_ : 0, std::vector<GainList>(kBlock));
    for (std::int64_t a = 0; a < nb; ++a) {
      const std::int64_t a0 = a * kBlock, a1 = std::min(n_, a0 + kBlock);
#pragma omp parallel num_threads(threads_) if (threads_ > 1 && nb - a > 1)
      {
        const int me = thread_num(), team = team_size();
        std::vector<T> cand(d_ * kTile);
        std::vector<PointDist<T>> column_buf(lists ? kTile * kBlock : 0);
        std::int64_t idx[kTile];
        double out[kTile], part[kTile];
        TileCapture<T> capture{};
        // Contiguous runs of b in thread order: row lists arrive in b order.
        const std::int64_t b_first = a + (nb - a) * me / team, b_last = a + (nb - a) * (me + 1) / team;
        for (std::int64_t b = b_first; b < b_last; ++b) {
          const std::int64_t b0 = b * kBlock, b1 = std::min(n_, b0 + kBlock);
          double* row = rows.data() + b * kBlock;
          std::fill(row, row + kBlock, 0.0);
          for (std::int64_t t0 = b0; t0 < b1; t0 += kTile) {
            const int w = static_cast<int>(std::min<std::int64_t>(kTile, b1 - t0));
            for (int l = 0; l < w; ++l) idx[l] = t0 + l;
            pack_tile(xp_.data(), n_, d_, idx, w, cand.data());
            if (lists) {  // one block of points: at most kBlock per lane
              capture = {kBlock, column_buf.data(), {}, /*forecast=*/false};
              for (int l = 0; l < kTile; ++l) capture.count[l] = l < w && open[t0 + l] ? 0 : kBlock + 1;
            }
            const PointBlocks run{a0, a1, part};
            RowGains<T> rg{w, idx, row, lists ? row_lists[me].data() : nullptr, row_cap};
            tile_gain(xp_.data(), n_, d_, cand.data(), cur_.data(), cur2_.data(), out,
                      lists ? &capture : nullptr, &run, b > a ? &rg : nullptr,
                      d2_ ? pair_d2(a, b) + (t0 - b0) : nullptr);
            for (int l = 0; l < w; ++l) gain[t0 + l] += out[l];  // block a's partial
            if (lists) {
#pragma omp critical(crepe_lists)
              for (int l = 0; l < w; ++l)
                grow_list(t0 + l, capture.out + l * kBlock, capture.count[l], kBlock, open);
            }
          }
        }
      }
      for (std::int64_t i = a0; i < a1; ++i)
        for (std::int64_t b = a + 1; b < nb; ++b) gain[i] += rows[b * kBlock + (i - a0)];
      if (!lists) continue;
      for (std::int64_t i = a0; i < a1; ++i) {  // rows in b order, then block a's lists are whole
        for (std::vector<GainList>& mine : row_lists) {
          GainList& r = mine[i - a0];
          grow_list(i, r.data(), static_cast<std::int64_t>(r.size()), row_cap, open);
          r.clear();
        }
        if (open[i] && !selected_[i]) {
          listed_[i] = 1;
        } else {
          drop_list(i);
        }
      }
    }
    if (lists) list_room_ += row_cap * kBlock * threads_;
    if (d2_) {  // its room goes to the lists
      if (!capture_bufs_.empty()) list_room_ += d2_bytes() / static_cast<std::int64_t>(sizeof(PointDist<T>));
      d2_.reset();
    }
  }

  // Appends m points recorded for candidate e (a recording that holds at
  // most cap, so m > cap means it overflowed) to its list while it is
  // collecting; an overflow, more than list_cap_ points or no room closes it.
  void grow_list(std::int64_t e, const PointDist<T>* p, std::int64_t m, std::int64_t cap,
                 std::vector<char>& open) {
    if (!open[e]) return;
    GainList& L = lists_[e];
    const std::int64_t size = static_cast<std::int64_t>(L.size());
    const std::int64_t had = static_cast<std::int64_t>(L.capacity());
    const std::int64_t want = size + m > had ? std::max(size + m, std::min(2 * had, list_cap_)) : had;
    if (m > cap || size + m > list_cap_ || want - had > list_room_) {
      open[e] = 0;
      drop_list(e);
      return;
    }
    L.reserve(want);
    L.insert(L.end(), p, p + m);
    list_room_ -= static_cast<std::int64_t>(L.capacity()) - had;
  }

  // x if keep, else +0.0, without a branch (keep is data: unpredictable).
  static double keep_or_zero(double x, bool keep) {
    std::uint64_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    bits &= ~std::uint64_t{0} * keep;
    std::memcpy(&x, &bits, sizeof x);
    return x;
  }

  // The list form of tile_gain: the same non-zero terms cur_i - d_ie, added
  // in the same blocked order (the zero terms it skips leave every partial sum
  // unchanged), so the same gain bit for bit. d_ie < cur_i as T values is
  // tile_gain's test d_ie^2 < cur2_i, except where d_ie == cur_i and the term
  // is zero anyway. Drops the points that can no longer gain.
  double list_gain(GainList& L) {
    double total = 0.0, part = 0.0;
    std::int64_t block = 0;
    std::size_t kept = 0;
    for (std::size_t j = 0; j < L.size(); ++j) {
      const PointDist<T> p = L[j];
      const double c = cur_[p.i];
      const bool keep = static_cast<double>(p.dist) < c;
      L[kept] = p;
      kept += keep;
      if (p.i / kBlock != block) {  // rare: lists are short and sorted
        total += part;
        part = 0.0;
        block = p.i / kBlock;
      }
      part += keep_or_zero(c - static_cast<double>(p.dist), keep);
    }
    total += part;
    L.resize(kept);
    if (L.capacity() > 2 * kept + 64) {
      list_room_ += static_cast<std::int64_t>(L.capacity());
      L.shrink_to_fit();
      list_room_ -= static_cast<std::int64_t>(L.capacity());
    }
    return total;
  }

  // Point i moves to the pick at position t if strictly closer (the first
  // pick takes every point).
  void move_if_closer(std::int64_t i, T d2, std::int64_t t) {
    if (t == 0 || d2 < cur2_[i]) {
      const double dist = static_cast<double>(std::sqrt(d2));
      if (t == 0 || dist < cur_[i]) {
        cur_[i] = dist;
        cur2_[i] = d2;
        assign_[i] = t;
      }
    }
  }

  // Make e the pick at position t. With e's gain list, only the points on it
  // can be closer to e than to their pick, so only they are looked at; their
  // d^2 is recomputed exactly as dist2_all does.
  void add_pick(std::int64_t e, std::int64_t t, const GainList* list = nullptr) {
    if (list) {
      for (const PointDist<T>& p : *list) {
        const T* xi = xp_.data() + panel_at(p.i, 0, d_);
        const T* xe = xp_.data() + panel_at(e, 0, d_);
        T d2 = T(0);
        for (std::int64_t k = 0; k < d_; ++k) {
          const T u = xi[k * kPanel] - xe[k * kPanel];
          d2 += u * u;
        }
        move_if_closer(p.i, d2, t);
      }
    } else {
      const T* d2 = dist2_from(e);
      for (std::int64_t i = 0; i < n_; ++i) move_if_closer(i, d2[i], t);
    }
    selected_[e] = 1;
  }

  // The squared distances of every point to point e (dist2_all), in d2all_.
  const T* dist2_from(std::int64_t e) {
    xe_.resize(d_);
    d2all_.resize((n_ + kPanel - 1) / kPanel * kPanel);
    for (std::int64_t k = 0; k < d_; ++k) xe_[k] = xp_[panel_at(e, k, d_)];
    dist2_all(xp_.data(), n_, d_, xe_.data(), d2all_.data());
    return d2all_.data();
  }

  using Entry = HeapEntry;  // the heap order (ties) is contract.hpp's HeapBelow
  using Below = HeapBelow;

  // Picks 1 .. k - 1 (k > 1).
  void lazy(std::int64_t k, std::int64_t* picks, double* gains) {
    init_lists();
    // Step 1: after the medoid, the gains of all other candidates, in one
    // parallel pass (no earlier bound is near them: the lazy greedy would
    // re-evaluate nearly all anyway).
    std::vector<std::int64_t> all;
    all.reserve(n_);
    for (std::int64_t e = 0; e < n_; ++e)
      if (!selected_[e]) all.push_back(e);
    std::vector<Entry> heap(all.size());
    std::vector<double> gain1(n_);
    if (symmetric_step1_applies()) {
      symmetric_step1(gain1.data(), /*lists=*/true);
      for (std::size_t j = 0; j < all.size(); ++j) heap[j] = {gain1[all[j]], all[j], 1};
    } else {
      evaluate(all.data(), static_cast<std::int64_t>(all.size()), gain1.data(),
               /*lists=*/d_ >= kStepOneListDims);
      for (std::size_t j = 0; j < all.size(); ++j) heap[j] = {gain1[j], all[j], 1};
    }
    std::make_heap(heap.begin(), heap.end(), Below{});
    // A stale entry is re-evaluated alone from its list if it has one, else
    // in a tile with other stale entries (a tile costs little more than one
    // candidate; extra evaluations only tighten bounds, never change the pick).
    std::vector<std::int64_t> batch;
    double g[kTile];
    auto flush = [&](std::int64_t t) {
      evaluate_tile(batch, g);
      for (std::size_t j = 0; j < batch.size(); ++j) {
        heap.push_back({g[j], batch[j], t});
        std::push_heap(heap.begin(), heap.end(), Below{});
      }
      batch.clear();
    };
    for (std::int64_t t = 1; t < k; ++t) {
      for (;;) {
        // Computed gains only shrink as cur shrinks (monotone rounding of a
        // fixed-order sum of non-negative terms), so stale bounds stay valid:
        // a fresh top with nothing pending beats every other element's gain or
        // ties it at a higher index, which is exactly the naive greedy choice.
        if (!heap.empty() && heap.front().fresh_at != t) {
          std::pop_heap(heap.begin(), heap.end(), Below{});
          const std::int64_t e = heap.back().idx;
          heap.pop_back();
          if (listed_[e]) {
            heap.push_back({list_gain(lists_[e]), e, t});
            std::push_heap(heap.begin(), heap.end(), Below{});
          } else {
            batch.push_back(e);
            if (static_cast<int>(batch.size()) == kTile) flush(t);
          }
        } else if (!batch.empty()) {
          flush(t);
        } else {
          std::pop_heap(heap.begin(), heap.end(), Below{});
          const Entry top = heap.back();
          heap.pop_back();
          picks[t] = top.idx;
          gains[t] = top.bound;
          if (listed_[top.idx]) {
            add_pick(top.idx, t, &lists_[top.idx]);
            drop_list(top.idx);
          } else {
            add_pick(top.idx, t);
          }
          break;
        }
      }
    }
  }

  void naive(std::int64_t k, std::int64_t* picks, double* gains) {
    std::vector<std::int64_t> all(n_);
    for (std::int64_t e = 0; e < n_; ++e) all[e] = e;
    std::vector<double> g(n_);
    for (std::int64_t t = 1; t < k; ++t) {
      evaluate(all.data(), n_, g.data());
      std::int64_t best = -1;
      for (std::int64_t e = 0; e < n_; ++e)
        if (!selected_[e] && (best < 0 || g[e] > g[best])) best = e;
      picks[t] = best;
      gains[t] = g[best];
      add_pick(best, t);
    }
  }

  std::vector<T> xp_;
  std::int64_t n_, d_;
  int threads_;
  std::int64_t list_bytes_;
  std::vector<double> cur_;
  std::vector<T> cur2_;
  std::vector<std::int64_t> assign_;
  std::vector<char> selected_;
  std::vector<T> xe_, d2all_;  // add_pick's buffers
  std::unique_ptr<T[], FreeDeleter> d2_;  // the medoid pass's kept distances (pair_d2), until step 1 ends
  // Lazy only: gain lists, their length limit, the room left for them (in
  // entries); evaluate_tile's number of runs (split_) and its tile buffer,
  // one capture and capture buffer per run, and the runs' block partials.
  static constexpr std::int64_t kSplitPoints = 64 * kBlock;
  // From this width on, the row sums a symmetric pass adds per distance cost
  // less than the half of the distances it saves.
  static constexpr std::int64_t kSymmetricDims = 32;
  // From this class size on, the medoid is found by bounds (bounded_medoid)
  // rather than from all n column sums.
  static constexpr std::int64_t kBoundedMedoidPoints = 1024;
  // Its margins' units: the relative rounding of double and of T.
  static constexpr double kEps = std::numeric_limits<double>::epsilon();
  static constexpr double kEpsT = static_cast<double>(std::numeric_limits<T>::epsilon());
  // The same for step 1, whose rows cost more (a compare and a list entry).
  static constexpr std::int64_t kSymmetricGainDims = 64;
  // From this width on, step 1 keeps gain lists for all candidates (saving
  // the lazy phase a pass that re-evaluates each one in a tile only to get
  // its list); below it, recording them costs more than that pass (measured:
  // +20% at d = 10, float32), and the lazy tiles keep the lists they need.
  static constexpr std::int64_t kStepOneListDims = 32;
  std::vector<GainList> lists_;
  std::vector<char> listed_;
  std::int64_t list_cap_ = 0, list_room_ = 0;
  int split_ = 1;
  std::vector<T> cand_;
  std::vector<std::vector<PointDist<T>>> capture_bufs_;
  std::vector<TileCapture<T>> captures_;
  std::vector<double> parts_;
};

}  // namespace

template <typename T>
void select_per_class(const T* X, std::int64_t n, std::int64_t d, const std::int64_t* cls,
                      std::int64_t num_classes, const std::int64_t* budgets, Method method,
                      int threads, std::int64_t* out_idx, std::int64_t* out_weight,
                      double* out_gain, double* out_obj, std::int64_t list_bytes) {
  if (list_bytes < 0)
    throw std::invalid_argument("select_per_class: list_bytes must be >= 0, got " +
                                std::to_string(list_bytes));
  // Rows of class c, in ascending order, at rows[start[c] .. start[c + 1]).
  const std::vector<std::int64_t> sizes = check_classes(n, d, cls, num_classes, budgets);
  std::vector<std::int64_t> start(num_classes + 1, 0), out_start(num_classes + 1, 0);
  for (std::int64_t c = 0; c < num_classes; ++c) {
    start[c + 1] = start[c] + sizes[c];
    out_start[c + 1] = out_start[c] + budgets[c];
  }
  std::vector<std::int64_t> rows(n), fill(start.begin(), start.end() - 1);
  for (std::int64_t i = 0; i < n; ++i) rows[fill[cls[i]]++] = i;

  // Largest classes first so dynamic scheduling balances well.
  std::vector<std::int64_t> order(num_classes);
  for (std::int64_t c = 0; c < num_classes; ++c) order[c] = c;
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
    return start[a + 1] - start[a] > start[b + 1] - start[b];
  });

  const int nt = resolve_threads(threads);
  // Many classes: one thread per class. Few: all threads inside each class.
  const bool outer = num_classes >= 2 * static_cast<std::int64_t>(nt);
  const int inner = outer ? 1 : nt;
  // The classes solved at once share list_bytes.
  const std::int64_t class_list_bytes = list_bytes / (outer ? nt : 1);
  std::exception_ptr error = nullptr;

  auto solve = [&](std::int64_t c) {
    const std::int64_t nc = start[c + 1] - start[c];
    const std::int64_t* r = rows.data() + start[c];
    ClassSolver<T> solver(panels_of(X, d, nc, r), nc, d, inner, class_list_bytes);
    const std::int64_t o = out_start[c];
    solver.run(budgets[c], method, out_idx + o, out_weight + o, out_gain + o, out_obj + c);
    for (std::int64_t t = 0; t < budgets[c]; ++t) out_idx[o + t] = r[out_idx[o + t]];
  };

#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (outer)
  for (std::int64_t j = 0; j < num_classes; ++j) {
    try {
      solve(order[j]);
    } catch (...) {
#pragma omp critical(crepe_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

template <typename T>
void column_sum_lower_bounds(const T* X, std::int64_t n, std::int64_t d, int threads,
                             double* lower) {
  ClassSolver<T> solver(panels_of(X, d, n, static_cast<const std::int64_t*>(nullptr)), n, d,
                        resolve_threads(threads), 0);
  std::vector<double> r;
  const std::vector<double> v = solver.colsum_lower_bounds(r);
  std::copy(v.begin(), v.end(), lower);
}

template void column_sum_lower_bounds<float>(const float*, std::int64_t, std::int64_t, int, double*);
template void column_sum_lower_bounds<double>(const double*, std::int64_t, std::int64_t, int, double*);
template void select_per_class<float>(const float*, std::int64_t, std::int64_t,
                                      const std::int64_t*, std::int64_t, const std::int64_t*,
                                      Method, int, std::int64_t*, std::int64_t*, double*, double*,
                                      std::int64_t);
template void select_per_class<double>(const double*, std::int64_t, std::int64_t,
                                       const std::int64_t*, std::int64_t, const std::int64_t*,
                                       Method, int, std::int64_t*, std::int64_t*, double*,
                                       double*, std::int64_t);

}  // namespace crepe
