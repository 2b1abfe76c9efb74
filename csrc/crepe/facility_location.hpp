// CRAIG facility location, maximised by (lazy) greedy. Pure C++17, no Python.
//
// For one class with points x_0..x_{n-1} in R^d:
//   d_ij = ||x_i - x_j||_2,  s_ij = D - d_ij  with D = max_ij d_ij,
//   F(S) = sum_i max_{j in S} s_ij.
// The greedy sequence does not depend on D (the first pick is the medoid), so
// the engine never forms the n x n matrix: it keeps cur_i = distance of i to
// its nearest pick and evaluates gain(e) = sum_i max(0, cur_i - d_ie) with
// distances computed on the fly. Memory is O(n d), plus gain lists: once a
// candidate has few gaining points (d_ie < cur_i), the lazy greedy keeps them
// with their distances and re-evaluates it from that list alone (cur only
// shrinks, so nothing outside it can gain again); a budget caps their memory.
//
// Determinism contract (shared with src/crepe/selection/reference.py, the
// NumPy oracle):
//   * distances in the input's precision T (float or double): d_ij^2 = sum
//     over dims in order k = 0..d-1 of (x_ik - x_jk)^2, then sqrt, all in T;
//     everything after (gains, sums, objective) in double; no FMA contraction
//     (-ffp-contract=off, explicit mul-then-add in the SIMD kernels);
//   * every sum over points i is "blocked": sequential within consecutive
//     blocks of kBlock points starting from 0.0, block partials added in
//     block order starting from 0.0.
// Gains are therefore bitwise reproducible for any thread count, and the lazy
// and naive greedy (and the oracle) see exactly the same numbers, so the
// lowest-index tie-break gives them the same sequence.
#pragma once

#include <cstdint>

namespace crepe {

/// Points per block of the canonical summation order (see above).
inline constexpr std::int64_t kBlock = 256;

/// Default memory the lazy greedy of one select_per_class call may spend on
/// gain lists (per-candidate lists of the points that still gain from it) and
/// on the distances its first pass keeps for the second (d >= 64). 256 MiB:
/// two 6,000-point classes solved at once keep theirs at d = 330 in float32.
inline constexpr std::int64_t kListBudget = std::int64_t{256} << 20;

enum class Method : int { Naive = 0, Lazy = 1 };

/// Per-class greedy facility location over all classes of a labelled set.
///
/// Preconditions (checked by the caller, crepe.select, and again here where
/// cheap): X is row-major (n, d), finite; cls[i] in [0, num_classes); every
/// class is non-empty and 1 <= budgets[c] <= size of class c.
/// Outputs (caller-allocated): out_idx/out_weight/out_gain have sum(budgets)
/// entries, classes in ascending order, each class in greedy order; out_idx
/// holds original row numbers; out_obj has num_classes entries.
/// Complexity per class: n^2 d for the first pick and the second (n^2 d / 2
/// each from d = 32 and d = 64 on: distances are symmetric; from d = 64 the
/// second reads the first's squared distances, O(n^2), when half the matrix
/// fits in 3/4 of list_bytes: it is kept only until then). From n = 1,024 and
/// n >= 8 d, unless the second pick reads them, the first pick's n^2 d falls
/// to O(n d^2) plus m n d for the m candidates whose lower bounds do not
/// rule them out (few for noise-like points, up to n), then O(n d)
/// per lazy re-evaluation, or O(m) for a candidate with a gain list of m points
/// (O(k n^2 d) for Method::Naive). Memory O(n d) plus at most list_bytes.
/// Thread safety: reentrant; uses up to `threads` OpenMP threads (0 = the
/// OpenMP default). list_bytes (>= 0; 0 = no lists) bounds the gain lists'
/// memory. Results depend on neither `threads` nor `list_bytes`.
template <typename T>
void select_per_class(const T* X, std::int64_t n, std::int64_t d,
                      const std::int64_t* cls, std::int64_t num_classes,
                      const std::int64_t* budgets, Method method, int threads,
                      std::int64_t* out_idx, std::int64_t* out_weight,
                      double* out_gain, double* out_obj,
                      std::int64_t list_bytes = kListBudget);

/// Lower bounds on the column sums of the distance matrix of one class's
/// points X (row-major (n, d), n >= 1): lower[e] <= sum_i d(x_i, x_e) as the
/// engine computes it (canonical order, distances in T). These are the bounds
/// the medoid search of classes of 1,024 points or more prunes by; exposed
/// so that tests can hold them to the exact sums. O(n d^2).
template <typename T>
void column_sum_lower_bounds(const T* X, std::int64_t n, std::int64_t d, int threads,
                             double* lower);

/// Threads the engine uses for `threads` (0 = OpenMP default, 1 without OpenMP).
int resolve_threads(int threads);

}  // namespace crepe
