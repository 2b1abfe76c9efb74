// ClassSolver: the greedy facility location of one class, declared once; its
// members are defined by phase in four files (the map at the top of
// facility_location.cpp says what lives where, what each buffer holds and the
// invariants):
//   facility_location.cpp  run: the driver, phase after phase
//   solver_bounds.cpp      the first pick: medoid, D, column-sum bounds
//   solver_gains.cpp       step 1 and the other gain evaluations, gain lists
//   solver_greedy.cpp      picks 2..k: the lazy and naive loops, add_pick
// Each file explicitly instantiates, for float and double, the members the
// other files call. Internal to the engine: pure C++17, no Python.
#pragma once

#include "contract.hpp"
#include "facility_location.hpp"
#include "tiles.hpp"

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

namespace crepe {

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

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

  // The k picks (within-class indices, greedy order), their weights and
  // gains, and F(S). facility_location.cpp.
  void run(std::int64_t k, Method method, std::int64_t* picks, std::int64_t* weights,
           double* gains, double* objective);

  // bounded_medoid's lower bounds on the column sums, and r_i = |x_i -
  // centroid| into r. Public for column_sum_lower_bounds. solver_bounds.cpp.
  std::vector<double> colsum_lower_bounds(std::vector<double>& r);

 private:
  // The first pick: the medoid e (smallest column sum of the distance
  // matrix, lowest index on ties), its column sum, and D.
  struct Medoid {
    std::int64_t e;
    double colsum, D;
  };

  // A candidate's gaining points, (i, d_ie) in ascending i, recorded when a
  // tile evaluated it. cur only shrinks, so no point outside the list can gain
  // from e again, and every later gain of e is a sum over its list alone.
  using GainList = std::vector<PointDist<T>>;

  using Entry = HeapEntry;  // the heap order (ties) is contract.hpp's HeapBelow
  using Below = HeapBelow;

  // --- The first pick (solver_bounds.cpp).
  Medoid medoid();
  void colsums_of(const std::int64_t* cands, std::int64_t m, double* out, T* max_d2);
  Medoid bounded_medoid();
  T max_d2_bounded(const std::vector<double>& r);
  double symmetric_first_pass(double* colsum);

  // --- Shared by the medoid's pass and step 1: the kept distances d2_.
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

  // --- Gains: step 1, the tiles, the gain lists (solver_gains.cpp).
  void init_lists();
  TileCapture<T> start_capture(int b, int w);
  void keep_lists(const std::int64_t* cands, int w, const TileCapture<T>* caps, int runs);
  void drop_list(std::int64_t e);
  void evaluate(const std::int64_t* cands, std::int64_t m, double* gain, bool lists = false);
  void evaluate_tile(const std::vector<std::int64_t>& cands, double* gain);
  void symmetric_step1(double* gain, bool lists);
  void grow_list(std::int64_t e, const PointDist<T>* p, std::int64_t m, std::int64_t cap,
                 std::vector<char>& open);
  double list_gain(GainList& L);

  // --- Picks 2..k and the state they update (solver_greedy.cpp).
  void move_if_closer(std::int64_t i, T d2, std::int64_t t);
  void add_pick(std::int64_t e, std::int64_t t, const GainList* list = nullptr);
  const T* dist2_from(std::int64_t e);
  void lazy(std::int64_t k, std::int64_t* picks, double* gains);
  void naive(std::int64_t k, std::int64_t* picks, double* gains);

  // From this width on, the row sums a symmetric pass adds per distance cost
  // less than the half of the distances it saves.
  static constexpr std::int64_t kSymmetricDims = 32;
  // The same for step 1, whose rows cost more (a compare and a list entry).
  static constexpr std::int64_t kSymmetricGainDims = 64;
  // From this width on, step 1 keeps gain lists for all candidates (saving
  // the lazy phase a pass that re-evaluates each one in a tile only to get
  // its list); below it, recording them costs more than that pass (measured:
  // +20% at d = 10, float32), and the lazy tiles keep the lists they need.
  static constexpr std::int64_t kStepOneListDims = 32;
  // From this class size on, the medoid is found by bounds (bounded_medoid)
  // rather than from all n column sums.
  static constexpr std::int64_t kBoundedMedoidPoints = 1024;
  // Its margins' units: the relative rounding of double and of T.
  static constexpr double kEps = std::numeric_limits<double>::epsilon();
  static constexpr double kEpsT = static_cast<double>(std::numeric_limits<T>::epsilon());
  // From this class size on (and with threads), evaluate_tile splits the
  // points into split_ runs over the threads.
  static constexpr std::int64_t kSplitPoints = 64 * kBlock;

  // The buffers: see the map at the top of facility_location.cpp.
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
  std::vector<GainList> lists_;
  std::vector<char> listed_;
  std::int64_t list_cap_ = 0, list_room_ = 0;
  int split_ = 1;
  std::vector<T> cand_;
  std::vector<std::vector<PointDist<T>>> capture_bufs_;
  std::vector<TileCapture<T>> captures_;
  std::vector<double> parts_;
};

}  // namespace crepe
