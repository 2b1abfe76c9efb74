// Python side of the CPU engine (module crepe._core); with bindings_cuda.cpp
// the only code that knows Python. Python (crepe.select, through
// src/crepe/selection/problem.py) validates and normalises inputs and
// allocates the outputs; this layer checks shapes again (binding_checks.hpp),
// takes raw pointers while holding the GIL, and releases it to compute.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "binding_checks.hpp"
#include "crepe/facility_location.hpp"

namespace py = pybind11;

namespace {

using crepe_py::check_select_arrays;
using crepe_py::F64;
using crepe_py::I64;

template <typename T>
void select_per_class(py::array_t<T, py::array::c_style> X, I64 cls, I64 budgets, int method,
                      int threads, I64 out_idx, I64 out_weight, F64 out_gain, F64 out_obj,
                      std::int64_t list_bytes) {
  if (X.ndim() != 2) throw std::invalid_argument("X must be 2-D, got ndim=" + std::to_string(X.ndim()));
  if (method != 0 && method != 1) throw std::invalid_argument("method must be 0 (naive) or 1 (lazy)");
  const std::int64_t n = X.shape(0), d = X.shape(1), c = budgets.size();
  check_select_arrays(n, cls, budgets, out_idx, out_weight, out_gain, out_obj);
  const std::int64_t* b = budgets.data();
  const T* x = X.data();
  const std::int64_t* cl = cls.data();
  std::int64_t* oi = out_idx.mutable_data();
  std::int64_t* ow = out_weight.mutable_data();
  double* og = out_gain.mutable_data();
  double* oo = out_obj.mutable_data();
  py::gil_scoped_release release;
  crepe::select_per_class<T>(x, n, d, cl, c, b, static_cast<crepe::Method>(method), threads, oi,
                             ow, og, oo, list_bytes);
}

template <typename T>
py::array_t<double> column_sum_lower_bounds(py::array_t<T, py::array::c_style> X, int threads) {
  if (X.ndim() != 2 || X.shape(0) < 1 || X.shape(1) < 1)
    throw std::invalid_argument("X must be 2-D and non-empty");
  py::array_t<double> lower(X.shape(0));
  const T* x = X.data();
  double* out = lower.mutable_data();
  const std::int64_t n = X.shape(0), d = X.shape(1);
  py::gil_scoped_release release;
  crepe::column_sum_lower_bounds<T>(x, n, d, threads, out);
  return lower;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "crepe's compiled selection engine (CPU). Use crepe.select, not this module.";
  m.attr("BLOCK") = crepe::kBlock;
  m.attr("LIST_BUDGET") = crepe::kListBudget;
#ifdef _OPENMP
  m.attr("OPENMP") = true;
#else
  m.attr("OPENMP") = false;
#endif
  // float32 and float64 overloads; noconvert: never a silent cast or copy.
  m.def("select_per_class", &select_per_class<float>, py::arg("X").noconvert(),
        py::arg("cls").noconvert(), py::arg("budgets").noconvert(), py::arg("method"),
        py::arg("threads"), py::arg("out_idx").noconvert(), py::arg("out_weight").noconvert(),
        py::arg("out_gain").noconvert(), py::arg("out_obj").noconvert(),
        py::arg("list_bytes") = crepe::kListBudget);
  m.def("select_per_class", &select_per_class<double>, py::arg("X").noconvert(),
        py::arg("cls").noconvert(), py::arg("budgets").noconvert(), py::arg("method"),
        py::arg("threads"), py::arg("out_idx").noconvert(), py::arg("out_weight").noconvert(),
        py::arg("out_gain").noconvert(), py::arg("out_obj").noconvert(),
        py::arg("list_bytes") = crepe::kListBudget);
  m.def("column_sum_lower_bounds", &column_sum_lower_bounds<float>, py::arg("X").noconvert(),
        py::arg("threads") = 0, "The medoid search's lower bounds on column sums (for tests).");
  m.def("column_sum_lower_bounds", &column_sum_lower_bounds<double>, py::arg("X").noconvert(),
        py::arg("threads") = 0);
  m.def("resolve_threads", &crepe::resolve_threads, py::arg("threads"),
        "Threads the engine would use (0 = OpenMP default).");
}
