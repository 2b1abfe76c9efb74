// Picks 2..k (phase 4 of the map in facility_location.cpp): the lazy greedy
// (a max-heap of upper bounds, stale entries re-evaluated from their gain
// lists or in tiles) and the naive greedy (every candidate at every step), and
// add_pick, the one place a pick updates cur, cur2, assign and selected.
#include "class_solver.hpp"
#include "contract.hpp"
#include "tiles.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace crepe {

namespace {

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

}  // namespace

// Point i moves to the pick at position t if strictly closer (the first
// pick takes every point).
template <typename T>
void ClassSolver<T>::move_if_closer(std::int64_t i, T d2, std::int64_t t) {
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
template <typename T>
void ClassSolver<T>::add_pick(std::int64_t e, std::int64_t t, const GainList* list) {
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
template <typename T>
const T* ClassSolver<T>::dist2_from(std::int64_t e) {
  xe_.resize(d_);
  d2all_.resize((n_ + kPanel - 1) / kPanel * kPanel);
  for (std::int64_t k = 0; k < d_; ++k) xe_[k] = xp_[panel_at(e, k, d_)];
  dist2_all(xp_.data(), n_, d_, xe_.data(), d2all_.data());
  return d2all_.data();
}

// Picks 1 .. k - 1 (k > 1).
template <typename T>
void ClassSolver<T>::lazy(std::int64_t k, std::int64_t* picks, double* gains) {
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

template <typename T>
void ClassSolver<T>::naive(std::int64_t k, std::int64_t* picks, double* gains) {
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

// What the other files call.
#define CREPE_INSTANTIATE(T)                                                 \
  template void ClassSolver<T>::add_pick(std::int64_t, std::int64_t, const GainList*); \
  template const T* ClassSolver<T>::dist2_from(std::int64_t);               \
  template void ClassSolver<T>::lazy(std::int64_t, std::int64_t*, double*);  \
  template void ClassSolver<T>::naive(std::int64_t, std::int64_t*, double*);
CREPE_INSTANTIATE(float)
CREPE_INSTANTIATE(double)
#undef CREPE_INSTANTIATE

}  // namespace crepe
