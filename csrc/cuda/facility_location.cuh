// CRAIG facility location on an NVIDIA GPU. This header is plain C++ (no CUDA
// or Python types) so that csrc/bindings_cuda.cpp can include it with the host
// compiler; the kernels live in facility_location.cu.
//
// Same problem, same numbers as crepe/facility_location.hpp: distances in the
// input's precision T with no FMA contraction (explicit round-to-nearest
// sub/mul/add intrinsics and a correctly rounded sqrt), every sum in double in
// the canonical blocked order (sequential within kBlock-point blocks, block
// partials added in block order). So the device computes bitwise the gains
// the CPU engine computes, and the lowest-index tie-break gives the same
// greedy sequence, weights and objective.
#pragma once

#include <cstdint>
#include <string>

namespace crepe::cuda {

/// Candidates a class re-evaluates per lazy round unless told otherwise.
inline constexpr std::int64_t kDefaultBatch = 256;

/// Per-class greedy facility location with X on a CUDA device.
///
/// X: device pointer to a row-major, C-contiguous (n, d) matrix of float
/// (f64 = false) or double (f64 = true) on `device`, read on `stream` (a
/// cudaStream_t as an integer; 0 = the legacy default stream). All other
/// arrays are host memory, exactly as crepe::select_per_class takes them:
/// cls[i] in [0, num_classes), every class non-empty, 1 <= budgets[c] <= its
/// size. out_stats (2 entries) receives the number of host<->device rounds and
/// the number of candidate gains evaluated after step 1.
/// method: 0 = naive (every candidate every step), 1 = lazy; batch: stale
/// candidates a class re-evaluates per lazy round (results do not depend on it).
/// Complexity per class: n^2 d for the first pick and for step 1, O(n d) per
/// lazy evaluation; device memory O(n d). Blocks until results are on the host.
/// Throws std::invalid_argument on bad sizes and std::runtime_error on CUDA
/// errors (no device, driver too old, pointer not on `device`, ...).
/// Thread safety: reentrant; the caller's current CUDA device is restored.
void select_per_class(const void* X, bool f64, std::int64_t n, std::int64_t d,
                      const std::int64_t* cls, std::int64_t num_classes,
                      const std::int64_t* budgets, int method, std::int64_t batch, int device,
                      std::uintptr_t stream, std::int64_t* out_idx, std::int64_t* out_weight,
                      double* out_gain, double* out_obj, std::int64_t* out_stats);

/// Number of CUDA devices the runtime sees; 0 (never an exception) when there
/// is no device or no usable driver.
int device_count();

/// The CUDA runtime's answer to "is there a device?": "ok" or its error text.
std::string runtime_status();

}  // namespace crepe::cuda
