// The CPU engine's entry points (select_per_class, column_sum_lower_bounds)
// and the driver of one class's solve (ClassSolver::run). What the engine
// computes, and the determinism contract, are in facility_location.hpp.
//
// MAP
//
// Phases, in the order one call runs them:
//   1. select_per_class (this file): checks classes and budgets
//      (contract.hpp's check_classes), groups the rows by class, orders the
//      classes largest first, and solves them on one thread each (many
//      classes: at least 2x the threads) or one after another with all threads
//      inside each; the classes solved at once share list_bytes. Per class:
//      panels_of copies its rows into the panel layout (tiles.hpp), a
//      ClassSolver solves it, and the within-class picks map back to rows.
//   2. The first pick, the medoid, and D (solver_bounds.cpp: medoid, which
//      chooses bounded_medoid with colsum_lower_bounds and max_d2_bounded,
//      symmetric_first_pass, or colsums_of over all candidates). The first
//      gain is n D - colsum(medoid).
//   3. Step 1, lazy only: the gains of all other candidates in one pass, and
//      their gain lists (solver_gains.cpp: symmetric_step1, or evaluate over
//      all; init_lists sizes the lists first). They seed the lazy heap.
//   4. Picks 2..k (solver_greedy.cpp: lazy, naive). The lazy loop
//      re-evaluates stale heap entries from their lists (solver_gains.cpp:
//      list_gain) or a tile at a time (evaluate_tile); the naive loop
//      evaluates every candidate at every step (evaluate). Each pick goes
//      through add_pick (solver_greedy.cpp), the only writer of cur, cur2,
//      assign and selected.
//   5. Weights (points per pick, from assign) and the objective F(S) =
//      sum_i (D - cur_i), blocked: ClassSolver::run, this file.
// Under all of them, the SIMD kernels over a tile of kTile candidates
// (tiles.cpp: pack_tile, tile_colsum, tile_gain). ClassSolver is declared in
// class_solver.hpp, with the thresholds that choose between the paths.
//
// Buffers (ClassSolver members; n points of the class, d dims, T = float or
// double; "point" and "candidate" are the same within-class indices):
//   xp_        panel_entries(n, d) T: the points in panels of kPanel (tiles.hpp:
//              panel_at), the last panel padded with zero points. Read-only.
//   cur_       n double: distance of point i to its nearest pick so far.
//   cur2_      n T: its square, as T (cur_[i] = double(sqrt_T(cur2_[i]))).
//   assign_    n int64: greedy position (0..k-1) of that nearest pick.
//   selected_  n char: 1 once point i is a pick (never a candidate again).
//   xe_, d2all_  d T, n rounded up to kPanel T: dist2_from's point and the
//              squared distances of all points to it (add_pick, max_d2_bounded).
//   d2_        d2_bytes() of huge pages, or null: the medoid pass's squared
//              distances of block pairs (a, b), a <= b, kBlock x kBlock T
//              each at pair_d2(a, b), row i - a*kBlock, column e - b*kBlock.
//              Allocated by run (lazy, k > 1, symmetric step 1, fits in 3/4
//              of list_bytes_), filled by symmetric_first_pass, read and
//              freed by symmetric_step1.
//   lists_     n GainList: candidate e's gaining points (i, d_ie), ascending
//              i; meaningful only while listed_[e].
//   listed_    n char: 1 while e's gain is to come from lists_[e].
//   list_cap_  the most points one list (and one capture lane) holds.
//   list_room_ entries of list_bytes_ not yet spent on lists (charged a
//              list's capacity as it grows, credited as it shrinks or drops).
//   capture_bufs_  threads_ x (kTile * list_cap_) PointDist: where tiles
//              record their lanes' gaining points (empty: no lists at all).
//   split_, captures_, parts_, cand_  evaluate_tile's runs over the points,
//              one capture per run, the runs' per-block partials (nblocks x
//              kTile double), its packed tile (d x kTile T).
// lazy's heap (local): HeapEntry {bound, idx, fresh_at} (contract.hpp).
//
// Invariants:
//   * After pick t: cur_[i] is the least distance of i to picks 0..t (as T,
//     then widened), assign_[i] the earliest position attaining it; cur_
//     never grows, so computed gains never grow either.
//   * Every gain and column sum, whichever path computes it (a tile, a run
//     of blocks, a symmetric pass's rows, a gain list), is the canonical
//     blocked sum of facility_location.hpp, bit for bit: results do not
//     depend on threads, list_bytes or batching.
//   * Heap: every entry's bound >= that candidate's current gain; fresh_at
//     == t means it is exact at pick t. Ties go to the lower index
//     (HeapBelow), as in the naive loop's strict `>` over ascending indices.
//   * listed_[e]: lists_[e] holds every point that can still gain from e
//     (and maybe some that no longer do; list_gain drops them), and e is not
//     a pick. A pick's list is dropped once add_pick has used it.
//   * Memory beyond O(n d): lists, capture buffers and d2_ together stay
//     within list_bytes_ (init_lists charges d2_, step 1 hands it back).
#include "facility_location.hpp"

#include "class_solver.hpp"
#include "contract.hpp"
#include "tiles.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <exception>
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

// Rows rows[0..n) of the row-major (., d) matrix X (rows = nullptr: rows
// 0..n-1) in the panel layout (tiles.hpp).
template <typename T>
std::vector<T> panels_of(const T* X, std::int64_t d, std::int64_t n, const std::int64_t* rows) {
  std::vector<T> xp(static_cast<std::size_t>(panel_entries(n, d)), T(0));
  for (std::int64_t j = 0; j < n; ++j)
    for (std::int64_t k = 0; k < d; ++k) xp[panel_at(j, k, d)] = X[(rows ? rows[j] : j) * d + k];
  return xp;
}

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

}  // namespace

// Phases 2 to 5 for one class (the map above).
template <typename T>
void ClassSolver<T>::run(std::int64_t k, Method method, std::int64_t* picks, std::int64_t* weights,
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
