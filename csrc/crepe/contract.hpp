// The rules both engines (crepe/facility_location.cpp and
// cuda/facility_location.cu) must apply identically, written once: the order
// of the lazy greedy's heap (which decides ties) and the checks of classes
// and budgets. Header-only, plain C++17 (nvcc compiles it too).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace crepe {

/// An entry of a class's lazy max-heap: an upper bound on the marginal gain
/// of candidate idx (an index within the class), exact when fresh_at is the
/// current pick position.
struct HeapEntry {
  double bound;
  std::int64_t idx;
  std::int64_t fresh_at;
};

/// Heap order (std::make_heap's "less"): best entry on top, i.e. larger
/// bound, then lower index. The naive greedy's strict `>` scan over ascending
/// indices picks the same candidate, so lazy and naive agree on every tie.
struct HeapBelow {
  bool operator()(const HeapEntry& a, const HeapEntry& b) const {
    return a.bound < b.bound || (a.bound == b.bound && a.idx > b.idx);
  }
};

/// Checks sizes, class ids and budgets; returns each class's size.
/// Throws std::invalid_argument (sizes in the message) unless n, d and
/// num_classes are >= 1, every cls[i] is in [0, num_classes), and every class
/// is non-empty with 1 <= budgets[c] <= its size. O(n + num_classes).
inline std::vector<std::int64_t> check_classes(std::int64_t n, std::int64_t d,
                                               const std::int64_t* cls,
                                               std::int64_t num_classes,
                                               const std::int64_t* budgets) {
  if (n < 1 || d < 1 || num_classes < 1)
    throw std::invalid_argument("select_per_class: need n >= 1, d >= 1, num_classes >= 1; got n=" +
                                std::to_string(n) + ", d=" + std::to_string(d) +
                                ", num_classes=" + std::to_string(num_classes));
  std::vector<std::int64_t> sizes(num_classes, 0);
  for (std::int64_t i = 0; i < n; ++i) {
    if (cls[i] < 0 || cls[i] >= num_classes)
      throw std::invalid_argument("select_per_class: class id " + std::to_string(cls[i]) +
                                  " at row " + std::to_string(i) + " outside [0, " +
                                  std::to_string(num_classes) + ")");
    ++sizes[cls[i]];
  }
  for (std::int64_t c = 0; c < num_classes; ++c)
    if (sizes[c] < 1 || budgets[c] < 1 || budgets[c] > sizes[c])
      throw std::invalid_argument("select_per_class: class " + std::to_string(c) + " has " +
                                  std::to_string(sizes[c]) + " points and budget " +
                                  std::to_string(budgets[c]) + "; need 1 <= budget <= size");
  return sizes;
}

}  // namespace crepe
