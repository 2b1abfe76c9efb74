// Shared by the two pybind11 modules (bindings.cpp, bindings_cuda.cpp; both
// compiled by the host compiler): array aliases and the length check.
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

}  // namespace crepe_py
