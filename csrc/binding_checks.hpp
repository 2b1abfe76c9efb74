// Shared by the two pybind11 modules (bindings.cpp, bindings_cuda.cpp; both
// compiled by the host compiler, never by nvcc): array aliases and the checks
// of the host arrays both modules' select_per_class take.
#pragma once

#include <pybind11/numpy.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace crepe_py {

using I64 = pybind11::array_t<std::int64_t, pybind11::array::c_style>;
using F64 = pybind11::array_t<double, pybind11::array::c_style>;

inline void check_len(const char* name, pybind11::ssize_t got, pybind11::ssize_t want) {
  if (got != want)
    throw std::invalid_argument(std::string(name) + " has " + std::to_string(got) +
                                " entries, expected " + std::to_string(want));
}

/// The host arrays of select_per_class, checked alike by both modules before
/// the engine writes to them: cls has n entries; out_idx, out_weight and
/// out_gain have one per pick (the sum of budgets); out_obj has one per class
/// (budgets has one per class). Throws std::invalid_argument naming the first
/// array that is off. O(number of classes).
inline void check_select_arrays(std::int64_t n, const I64& cls, const I64& budgets,
                                const I64& out_idx, const I64& out_weight, const F64& out_gain,
                                const F64& out_obj) {
  const std::int64_t c = budgets.size();
  check_len("cls", cls.size(), n);
  std::int64_t total = 0;
  const std::int64_t* b = budgets.data();
  for (std::int64_t j = 0; j < c; ++j) total += b[j];
  check_len("out_idx", out_idx.size(), total);
  check_len("out_weight", out_weight.size(), total);
  check_len("out_gain", out_gain.size(), total);
  check_len("out_obj", out_obj.size(), c);
}

}  // namespace crepe_py
