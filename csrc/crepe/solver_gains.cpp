// Gains (phase 3 of the map in facility_location.cpp, and the lazy loop's
// re-evaluations): every marginal gain the greedy reads, in the canonical
// blocked order whichever path computes it, and the gain lists that let a
// candidate with few gaining points be re-evaluated from its list alone.
//   * symmetric_step1: step 1 (all candidates after the medoid) over half the
//     matrix (d >= kSymmetricGainDims, more than one block), reading d2_ when
//     the medoid's pass kept it, assembling the candidates' lists;
//   * evaluate: any set of candidates by tiles, in parallel over tiles (step 1
//     otherwise, and every step of the naive greedy);
//   * evaluate_tile: one tile of stale candidates (the lazy loop), the points
//     split into runs over the threads for large classes;
//   * list_gain: one candidate from its list;
//   * init_lists, start_capture, keep_lists, grow_list, drop_list: the
//     lists' memory (within list_bytes_) and their bookkeeping.
#include "class_solver.hpp"
#include "tiles.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace crepe {

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

// x if keep, else +0.0, without a branch (keep is data: unpredictable).
double keep_or_zero(double x, bool keep) {
  std::uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  bits &= ~std::uint64_t{0} * keep;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

}  // namespace

// Lists are kept for candidates with at most n/4 gaining points (longer
// ones are cheaper to evaluate in a tile), within list_bytes_ in all.
template <typename T>
void ClassSolver<T>::init_lists() {
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
template <typename T>
TileCapture<T> ClassSolver<T>::start_capture(int b, int w) {
  TileCapture<T> c{list_cap_, capture_bufs_[b].data(), {}};
  for (int l = 0; l < kTile; ++l) c.count[l] = l < w ? 0 : list_cap_ + 1;
  return c;
}

// Keeps, as the gain lists of cands[0..w), what `runs` captures (runs of
// point blocks in block order) recorded of them: every lane that none
// overflowed, while room lasts.
template <typename T>
void ClassSolver<T>::keep_lists(const std::int64_t* cands, int w, const TileCapture<T>* caps,
                                int runs) {
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

template <typename T>
void ClassSolver<T>::drop_list(std::int64_t e) {
  list_room_ += static_cast<std::int64_t>(lists_[e].capacity());
  lists_[e] = GainList{};
  listed_[e] = 0;
}

// gain[j] = current marginal gain of cands[j], by tiles, in parallel when
// there are enough of them to repay waking the threads. Each gain is summed
// in the canonical order, so it does not depend on the batching. With
// `lists` (after init_lists), also keeps the gain lists of the candidates
// with few gaining points, so that their next evaluations need no tile.
template <typename T>
void ClassSolver<T>::evaluate(const std::int64_t* cands, std::int64_t m, double* gain, bool lists) {
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
template <typename T>
void ClassSolver<T>::evaluate_tile(const std::vector<std::int64_t>& cands, double* gain) {
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
template <typename T>
void ClassSolver<T>::symmetric_step1(double* gain, bool lists) {
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
template <typename T>
void ClassSolver<T>::grow_list(std::int64_t e, const PointDist<T>* p, std::int64_t m, std::int64_t cap,
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

// The list form of tile_gain: the same non-zero terms cur_i - d_ie, added
// in the same blocked order (the zero terms it skips leave every partial sum
// unchanged), so the same gain bit for bit. d_ie < cur_i as T values is
// tile_gain's test d_ie^2 < cur2_i, except where d_ie == cur_i and the term
// is zero anyway. Drops the points that can no longer gain.
template <typename T>
double ClassSolver<T>::list_gain(GainList& L) {
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

// What the other files call.
#define CREPE_INSTANTIATE(T)                                                            \
  template void ClassSolver<T>::init_lists();                                           \
  template void ClassSolver<T>::drop_list(std::int64_t);                                \
  template void ClassSolver<T>::evaluate(const std::int64_t*, std::int64_t, double*, bool); \
  template void ClassSolver<T>::evaluate_tile(const std::vector<std::int64_t>&, double*); \
  template void ClassSolver<T>::symmetric_step1(double*, bool);                         \
  template double ClassSolver<T>::list_gain(GainList&);
CREPE_INSTANTIATE(float)
CREPE_INSTANTIATE(double)
#undef CREPE_INSTANTIATE

}  // namespace crepe
