// Python side of the CUDA engine (module crepe._cuda). Compiled by the host
// compiler: it sees only the plain C++ header, never CUDA or torch headers.
// The matrix crosses as a device pointer plus a stream handle taken from torch
// in Python (src/crepe/selection/cuda.py); small host arrays cross as NumPy
// arrays, checked as csrc/bindings.cpp checks them (binding_checks.hpp), and
// the GIL is released while the device works.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "binding_checks.hpp"
#include "cuda/facility_location.cuh"

namespace py = pybind11;

namespace {

using crepe_py::check_len;
using crepe_py::check_select_arrays;
using crepe_py::F64;
using crepe_py::I64;

void select_per_class(std::uintptr_t X, bool f64, std::int64_t n, std::int64_t d, I64 cls,
                      I64 budgets, int method, std::int64_t batch, int device,
                      std::uintptr_t stream, I64 out_idx, I64 out_weight, F64 out_gain,
                      F64 out_obj, I64 out_stats) {
  if (X == 0) throw std::invalid_argument("X is a null device pointer");
  const std::int64_t c = budgets.size();
  check_select_arrays(n, cls, budgets, out_idx, out_weight, out_gain, out_obj);
  check_len("out_stats", out_stats.size(), 2);
  const std::int64_t* b = budgets.data();
  const std::int64_t* cl = cls.data();
  std::int64_t* oi = out_idx.mutable_data();
  std::int64_t* ow = out_weight.mutable_data();
  double* og = out_gain.mutable_data();
  double* oo = out_obj.mutable_data();
  std::int64_t* os = out_stats.mutable_data();
  py::gil_scoped_release release;
  crepe::cuda::select_per_class(reinterpret_cast<const void*>(X), f64, n, d, cl, c, b, method,
                                batch, device, stream, oi, ow, og, oo, os);
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "crepe's CUDA selection engine. Use crepe.select(..., device='cuda'), not this module.";
  m.attr("DEFAULT_BATCH") = crepe::cuda::kDefaultBatch;
  m.def("select_per_class", &select_per_class, py::arg("X"), py::arg("f64"), py::arg("n"),
        py::arg("d"), py::arg("cls").noconvert(), py::arg("budgets").noconvert(),
        py::arg("method"), py::arg("batch"), py::arg("device"), py::arg("stream"),
        py::arg("out_idx").noconvert(), py::arg("out_weight").noconvert(),
        py::arg("out_gain").noconvert(), py::arg("out_obj").noconvert(),
        py::arg("out_stats").noconvert(),
        "X is a device pointer (int) to a C-contiguous (n, d) float32 (f64=False) or float64 "
        "matrix on `device`; stream is a cudaStream_t as int.");
  m.def("device_count", &crepe::cuda::device_count,
        "CUDA devices the runtime sees (0 when there is none or no usable driver).");
  m.def("runtime_status", &crepe::cuda::runtime_status,
        "'ok', or why the CUDA runtime sees no device.");
}
