// Facility location greedy on the GPU: kernels plus the host loop that drives
// them. See facility_location.cuh for the contract.
//
// Work split. The host keeps, per class, the same lazy max-heap as the CPU
// engine (bounds in double, lowest index wins ties); the device holds the
// class-sorted points and cur/cur2/assign and does every distance. One
// "round" = one upload of the round's picks and candidates, one update kernel
// (points move to a new pick), one evaluation of the candidates' gains, one
// download and one stream sync. All classes advance in the same round, so the
// number of syncs is the longest class's, not the sum.
//
// Why lazy, not naive-on-the-GPU: naive greedy re-evaluates all n candidates
// per pick (n^2 d per step: ~6000 full passes at n = 60,000, k = 6,000),
// while lazy re-evaluates a few hundred per pick (one batch per round, rarely
// two), so it does ~100x less arithmetic; a round costs little more than its
// launch latency. Both return the naive sequence: gains are computed bitwise
// identically at every evaluation, and a fixed-order sum of terms that only
// shrink as cur shrinks only shrinks, so stale bounds stay valid.
#include "facility_location.cuh"
#include "crepe/contract.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace crepe::cuda {
namespace {

constexpr int kBlock = 256;        // canonical summation block, = crepe::kBlock
constexpr int kThreads = 128;      // candidates per thread block, one per thread
constexpr int kRegDims = 16;       // up to this d, a candidate lives in registers
constexpr int kSharedBytes = 32 * 1024;  // one staged tile of points

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error so the process can go on
    throw std::runtime_error(std::string("crepe._cuda: ") + what + " failed: " +
                             cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
  }
}

// ---- arithmetic that rounds exactly like the CPU engine (never fused).
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sqrt_rn(float a) { return __fsqrt_rn(a); }
__device__ __forceinline__ double sqrt_rn(double a) { return __dsqrt_rn(a); }

// Order-preserving bits of a non-negative float/double, for atomicMax.
__device__ __forceinline__ unsigned long long max_bits(float v) { return __float_as_uint(v); }
__device__ __forceinline__ unsigned long long max_bits(double v) {
  return static_cast<unsigned long long>(__double_as_longlong(v));
}

// squared distance, dims in order 0..d-1, (a_k - b_k)^2 = (b_k - a_k)^2 exactly.
template <typename T>
__device__ __forceinline__ T dist2(const T* __restrict__ a, const T* __restrict__ b, int d) {
  T acc = T(0);
  for (int k = 0; k < d; ++k) {
    const T t = sub_rn(a[k], b[k]);
    acc = add_rn(acc, mul_rn(t, t));
  }
  return acc;
}

// A thread block's share of one evaluation: up to kThreads candidates of one
// class against the points of that class.
struct Tile {
  std::int64_t off;    // split mode: this tile's partials, nb x kThreads doubles
  std::int32_t cls;    // class of every candidate in the tile
  std::int32_t slot0;  // first slot (index into slots / out)
  std::int32_t count;  // candidates, <= kThreads
  std::int32_t nb;     // kBlock-point blocks of the class
};

// kColsum: out = sum_i d(x_i, e) and class_max = max d^2 (first pick).
// Otherwise out = sum_i max(0, cur_i - d(x_i, e)) (gains).
// kWhole: a thread sums all blocks of its class (total = 0 + p_0 + p_1 ...),
// one thread block per tile. Split: blockIdx.y is one block, its partial goes
// to `out` at the tile's offset and reduce_kernel adds them in block order
// from 0.0, the same association: both modes give bitwise the same sums.
template <typename T, bool kColsum, bool kWhole>
__global__ void __launch_bounds__(kThreads)
    eval_kernel(const T* __restrict__ xs, int d, const std::int64_t* __restrict__ start,
                const Tile* __restrict__ tiles, const std::int32_t* __restrict__ slots,
                const double* __restrict__ cur, const T* __restrict__ cur2, int tile_points,
                double* __restrict__ out, unsigned long long* __restrict__ class_max) {
  extern __shared__ double smem[];
  double* s_cur = smem;                                      // tile_points
  T* s_pts = reinterpret_cast<T*>(s_cur + tile_points);      // tile_points x d
  T* s_cur2 = s_pts + static_cast<std::int64_t>(tile_points) * d;  // tile_points

  const Tile tile = tiles[blockIdx.x];
  const int b_lo = kWhole ? 0 : static_cast<int>(blockIdx.y);
  if (b_lo >= tile.nb) return;  // uniform over the thread block
  const int b_hi = kWhole ? tile.nb : b_lo + 1;
  const std::int64_t lo = start[tile.cls];
  const std::int64_t n_c = start[tile.cls + 1] - lo;
  const int l = threadIdx.x;
  const bool active = l < tile.count;
  // Idle lanes shadow lane 0: they load, compute and discard.
  const T* xe = xs + static_cast<std::int64_t>(slots[tile.slot0 + (active ? l : 0)]) * d;
  const bool in_regs = d <= kRegDims;
  T c[kRegDims];
#pragma unroll
  for (int k = 0; k < kRegDims; ++k) c[k] = (in_regs && k < d) ? xe[k] : T(0);

  double total = 0.0;
  T mx = T(0);
  for (int b = b_lo; b < b_hi; ++b) {
    const std::int64_t b0 = lo + static_cast<std::int64_t>(b) * kBlock;
    const std::int64_t left = lo + n_c - b0;
    const int in_block = left < kBlock ? static_cast<int>(left) : kBlock;
    double part = 0.0;
    // tile_points divides kBlock, so tiles never straddle a summation block.
    for (int s = 0; s < in_block; s += tile_points) {
      const int m = min(tile_points, in_block - s);
      __syncthreads();
      const T* src = xs + (b0 + s) * d;
      for (int j = l; j < m * d; j += kThreads) s_pts[j] = src[j];
      if (!kColsum) {
        for (int j = l; j < m; j += kThreads) {
          s_cur[j] = cur[b0 + s + j];
          s_cur2[j] = cur2[b0 + s + j];
        }
      }
      __syncthreads();
      for (int i = 0; i < m; ++i) {
        const T* p = s_pts + i * d;  // same address in every lane: a broadcast
        T acc = T(0);
        if (in_regs) {
#pragma unroll
          for (int k = 0; k < kRegDims; ++k) {
            if (k < d) {
              const T t = sub_rn(c[k], p[k]);
              acc = add_rn(acc, mul_rn(t, t));
            }
          }
        } else {
          acc = dist2(xe, p, d);
        }
        if (kColsum) {
          part += static_cast<double>(sqrt_rn(acc));
          mx = max(mx, acc);
        } else if (acc < s_cur2[i]) {
          // acc >= cur2 implies sqrt(acc) >= cur: a zero term, no sqrt needed.
          part += s_cur[i] - static_cast<double>(sqrt_rn(acc));
        }
      }
    }
    total += part;
  }
  if (active) {
    if (kWhole)
      out[tile.slot0 + l] = total;
    else
      out[tile.off + static_cast<std::int64_t>(b_lo) * kThreads + l] = total;
  }
  if (kColsum) {
    unsigned long long bits = max_bits(mx);
    for (int o = 16; o > 0; o /= 2) {
      const unsigned long long other = __shfl_down_sync(0xffffffffu, bits, o);
      bits = other > bits ? other : bits;
    }
    if ((l & 31) == 0) atomicMax(class_max + tile.cls, bits);
  }
}

// gain[slot] = 0.0 + partial_0 + partial_1 + ... (block order).
__global__ void __launch_bounds__(kThreads)
    reduce_kernel(const Tile* __restrict__ tiles, const double* __restrict__ partial,
                  double* __restrict__ out) {
  const Tile tile = tiles[blockIdx.x];
  const int l = threadIdx.x;
  if (l >= tile.count) return;
  double total = 0.0;
  for (int b = 0; b < tile.nb; ++b) total += partial[tile.off + static_cast<std::int64_t>(b) * kThreads + l];
  out[tile.slot0 + l] = total;
}

// Points of classes with a new pick move to it when strictly closer (the first
// pick, step 0, takes them all): the CPU engine's add_pick, per point.
template <typename T>
__global__ void update_kernel(const T* __restrict__ xs, int d, std::int64_t n,
                              const std::int32_t* __restrict__ cls_of,
                              const std::int32_t* __restrict__ pick,
                              const std::int32_t* __restrict__ step, double* __restrict__ cur,
                              T* __restrict__ cur2, std::int32_t* __restrict__ assign) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const int c = cls_of[i];
    const std::int32_t p = pick[c];
    if (p < 0) continue;
    const T d2 = dist2(xs + p * static_cast<std::int64_t>(d), xs + i * d, d);
    const int t = step[c];
    if (t == 0 || d2 < cur2[i]) {
      const double dist = static_cast<double>(sqrt_rn(d2));
      if (t == 0 || dist < cur[i]) {
        cur[i] = dist;
        cur2[i] = d2;
        assign[i] = t;
      }
    }
  }
}

// xs[j] = X[rows[j]]: rows of each class contiguous, ascending within a class.
template <typename T>
__global__ void gather_kernel(const T* __restrict__ X, const std::int64_t* __restrict__ rows,
                              std::int64_t n, int d, T* __restrict__ xs) {
  const std::int64_t total = n * d;
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
       j < total; j += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    xs[j] = X[rows[j / d] * d + j % d];
}

// ---- host side

template <typename T>
class DeviceArray {
 public:
  DeviceArray(std::size_t count, cudaStream_t s) : s_(s) {
    check(cudaMallocAsync(reinterpret_cast<void**>(&p_), std::max<std::size_t>(count, 1) * sizeof(T), s),
          "cudaMallocAsync");
  }
  ~DeviceArray() {
    if (p_) cudaFreeAsync(p_, s_);
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
  cudaStream_t s_;
};

// Page-locked host memory, so that the per-round copies are truly async.
template <typename T>
class PinnedArray {
 public:
  explicit PinnedArray(std::size_t count) {
    check(cudaMallocHost(reinterpret_cast<void**>(&p_), std::max<std::size_t>(count, 1) * sizeof(T)),
          "cudaMallocHost");
  }
  ~PinnedArray() {
    if (p_) cudaFreeHost(p_);
  }
  PinnedArray(const PinnedArray&) = delete;
  PinnedArray& operator=(const PinnedArray&) = delete;
  T* get() const { return p_; }
  T& operator[](std::size_t i) const { return p_[i]; }

 private:
  T* p_ = nullptr;
};

class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&prev_), "cudaGetDevice");
    check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(prev_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
};

// The lazy heap's entries and order (ties): the CPU engine's, from contract.hpp.
using Entry = crepe::HeapEntry;
const crepe::HeapBelow below{};

inline std::size_t align16(std::size_t x) { return (x + 15) & ~std::size_t(15); }

template <typename T>
class Solver {
 public:
  Solver(const T* X, std::int64_t n, std::int64_t d, const std::int64_t* cls,
         std::int64_t num_classes, const std::int64_t* budgets, std::int64_t batch,
         cudaStream_t stream)
      : n_(n), d_(static_cast<int>(d)), C_(num_classes), batch_(batch), s_(stream),
        start_(num_classes + 1, 0), budgets_(budgets, budgets + num_classes), rows_(n),
        xs_(n * d, stream), cur_(n, stream), cur2_(n, stream), assign_(n, stream),
        out_(n, stream), start_dev_(num_classes + 1, stream), cls_dev_(n, stream),
        class_max_(num_classes, stream), h_out_(n), h_cls_max_(num_classes) {
    for (std::int64_t i = 0; i < n; ++i) ++start_[cls[i] + 1];
    for (std::int64_t c = 0; c < C_; ++c) start_[c + 1] += start_[c];
    std::vector<std::int64_t> fill(start_.begin(), start_.end() - 1);
    std::vector<std::int32_t> cls_sorted(n);
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t j = fill[cls[i]]++;
      rows_[j] = i;
      cls_sorted[j] = static_cast<std::int32_t>(cls[i]);
    }
    // Largest power of two <= kBlock whose staged points fit in shared memory.
    const std::size_t per_point = sizeof(double) + sizeof(T) * (d + 1);
    tile_points_ = kBlock;
    while (tile_points_ > 1 && tile_points_ * per_point > kSharedBytes) tile_points_ /= 2;
    if (tile_points_ * per_point > kSharedBytes)
      throw std::invalid_argument("crepe._cuda: d=" + std::to_string(d) +
                                  " is too large for the CUDA path (one point must fit in " +
                                  std::to_string(kSharedBytes) + " bytes of shared memory)");
    smem_ = tile_points_ * per_point;

    {
      DeviceArray<std::int64_t> rows_dev(n, s_);
      PinnedArray<std::int64_t> h_rows(n);
      std::memcpy(h_rows.get(), rows_.data(), n * sizeof(std::int64_t));
      check(cudaMemcpyAsync(rows_dev.get(), h_rows.get(), n * sizeof(std::int64_t),
                            cudaMemcpyHostToDevice, s_),
            "copy rows");
      gather_kernel<T><<<grid_for(n * d), 256, 0, s_>>>(X, rows_dev.get(), n, d_, xs_.get());
      check(cudaGetLastError(), "gather_kernel launch");
      check(cudaMemcpyAsync(start_dev_.get(), start_.data(), (C_ + 1) * sizeof(std::int64_t),
                            cudaMemcpyHostToDevice, s_),
            "copy class starts");
      check(cudaMemcpyAsync(cls_dev_.get(), cls_sorted.data(), n * sizeof(std::int32_t),
                            cudaMemcpyHostToDevice, s_),
            "copy class ids");
      // The pageable copies above are synchronous w.r.t. the host buffers;
      // h_rows must outlive its async copy.
      check(cudaStreamSynchronize(s_), "cudaStreamSynchronize");
    }

    // Staging: tiles + slots + pick + step, packed per round.
    std::int64_t max_tiles = 0, partial = 0;
    for (std::int64_t c = 0; c < C_; ++c) {
      const std::int64_t nc = size(c);
      max_tiles += (nc + kThreads - 1) / kThreads;
      const std::int64_t cands = std::min(batch_, nc);
      partial += (cands + kThreads - 1) / kThreads * kThreads * ((nc + kBlock - 1) / kBlock);
    }
    up_bytes_ = align16(max_tiles * sizeof(Tile)) + align16(n * sizeof(std::int32_t)) +
                2 * align16(C_ * sizeof(std::int32_t));
    h_up_ = std::make_unique<PinnedArray<unsigned char>>(up_bytes_);
    d_up_ = std::make_unique<DeviceArray<unsigned char>>(up_bytes_, s_);
    partial_ = std::make_unique<DeviceArray<double>>(partial, s_);
    check(cudaEventCreateWithFlags(&up_done_, cudaEventDisableTiming), "cudaEventCreate");
  }

  ~Solver() {
    if (up_done_) cudaEventDestroy(up_done_);
  }
  Solver(const Solver&) = delete;
  Solver& operator=(const Solver&) = delete;

  void run(int method, std::int64_t* out_idx, std::int64_t* out_weight, double* out_gain,
           double* out_obj, std::int64_t* out_stats) {
    picks_.assign(C_, {});
    gains_.assign(C_, {});
    t_.assign(C_, 1);
    std::vector<double> D(C_);
    first_pick(D);
    if (method == 0)
      naive();
    else
      lazy();
    finish(D, out_idx, out_weight, out_gain, out_obj);
    out_stats[0] = rounds_;
    out_stats[1] = evaluations_;
  }

 private:
  std::int64_t size(std::int64_t c) const { return start_[c + 1] - start_[c]; }
  static unsigned grid_for(std::int64_t work) {
    return static_cast<unsigned>(std::min<std::int64_t>((work + 255) / 256, 4096));
  }

  // A round's upload, laid out in h_up_ / d_up_.
  struct Round {
    std::vector<Tile> tiles;
    std::vector<std::int32_t> slots;
    std::vector<std::int32_t> pick, step;
  };

  void reset(Round& r) const {
    r.tiles.clear();
    r.slots.clear();
    r.pick.assign(C_, -1);
    r.step.assign(C_, 0);
  }

  // Tiles over slots [first, end) of r.slots, all of class c.
  void add_tiles(Round& r, std::int64_t c, std::size_t first) const {
    const std::int32_t nb = static_cast<std::int32_t>((size(c) + kBlock - 1) / kBlock);
    std::int64_t off = r.tiles.empty() ? 0 : r.tiles.back().off + std::int64_t(r.tiles.back().nb) * kThreads;
    for (std::size_t s = first; s < r.slots.size(); s += kThreads) {
      const int count = static_cast<int>(std::min<std::size_t>(kThreads, r.slots.size() - s));
      r.tiles.push_back({off, static_cast<std::int32_t>(c), static_cast<std::int32_t>(s), count, nb});
      off += std::int64_t(nb) * kThreads;
    }
  }

  struct Uploaded {
    const Tile* tiles;
    const std::int32_t* slots;
    const std::int32_t* pick;
    const std::int32_t* step;
  };

  Uploaded upload(const Round& r) {
    // The previous upload must have left the pinned buffer before it is rewritten.
    check(cudaEventSynchronize(up_done_), "cudaEventSynchronize");
    unsigned char* h = h_up_->get();
    unsigned char* dv = d_up_->get();
    std::size_t o = 0;
    auto put = [&](const void* src, std::size_t bytes) {
      std::memcpy(h + o, src, bytes);
      const std::size_t at = o;
      o += align16(bytes);
      return dv + at;
    };
    Uploaded u;
    u.tiles = reinterpret_cast<const Tile*>(put(r.tiles.data(), r.tiles.size() * sizeof(Tile)));
    u.slots = reinterpret_cast<const std::int32_t*>(put(r.slots.data(), r.slots.size() * sizeof(std::int32_t)));
    u.pick = reinterpret_cast<const std::int32_t*>(put(r.pick.data(), C_ * sizeof(std::int32_t)));
    u.step = reinterpret_cast<const std::int32_t*>(put(r.step.data(), C_ * sizeof(std::int32_t)));
    check(cudaMemcpyAsync(dv, h, o, cudaMemcpyHostToDevice, s_), "upload");
    check(cudaEventRecord(up_done_, s_), "cudaEventRecord");
    return u;
  }

  void launch_update(const Uploaded& u) {
    update_kernel<T><<<grid_for(n_), 256, 0, s_>>>(xs_.get(), d_, n_, cls_dev_.get(), u.pick,
                                                   u.step, cur_.get(), cur2_.get(), assign_.get());
    check(cudaGetLastError(), "update_kernel launch");
  }

  // Whole mode: out[slot] for every slot of r.
  template <bool kColsum>
  void launch_whole(const Round& r, const Uploaded& u) {
    eval_kernel<T, kColsum, true><<<static_cast<unsigned>(r.tiles.size()), kThreads, smem_, s_>>>(
        xs_.get(), d_, start_dev_.get(), u.tiles, u.slots, cur_.get(), cur2_.get(), tile_points_,
        out_.get(), class_max_.get());
    check(cudaGetLastError(), "eval_kernel launch");
  }

  void launch_split(const Round& r, const Uploaded& u) {
    std::int32_t nb_max = 0;
    for (const Tile& t : r.tiles) nb_max = std::max(nb_max, t.nb);
    const dim3 grid(static_cast<unsigned>(r.tiles.size()), static_cast<unsigned>(nb_max));
    eval_kernel<T, false, false><<<grid, kThreads, smem_, s_>>>(
        xs_.get(), d_, start_dev_.get(), u.tiles, u.slots, cur_.get(), cur2_.get(), tile_points_,
        partial_->get(), class_max_.get());
    check(cudaGetLastError(), "eval_kernel launch");
    reduce_kernel<<<static_cast<unsigned>(r.tiles.size()), kThreads, 0, s_>>>(u.tiles, partial_->get(),
                                                                              out_.get());
    check(cudaGetLastError(), "reduce_kernel launch");
  }

  // h_out_[0..count) = out_[0..count) once the stream reaches here.
  void download(std::size_t count) {
    check(cudaMemcpyAsync(h_out_.get(), out_.get(), count * sizeof(double), cudaMemcpyDeviceToHost, s_),
          "download");
    check(cudaStreamSynchronize(s_), "cudaStreamSynchronize");
  }

  // Every class: column sums and D, medoid = lowest-index argmin, applied.
  void first_pick(std::vector<double>& D) {
    Round r;
    reset(r);
    for (std::int64_t c = 0; c < C_; ++c) {
      const std::size_t first = r.slots.size();
      for (std::int64_t j = start_[c]; j < start_[c + 1]; ++j) r.slots.push_back(static_cast<std::int32_t>(j));
      add_tiles(r, c, first);
    }
    check(cudaMemsetAsync(class_max_.get(), 0, C_ * sizeof(unsigned long long), s_), "memset");
    Uploaded u = upload(r);
    launch_whole<true>(r, u);
    check(cudaMemcpyAsync(h_cls_max_.get(), class_max_.get(), C_ * sizeof(unsigned long long),
                          cudaMemcpyDeviceToHost, s_),
          "download");
    download(n_);
    reset(r);
    for (std::int64_t c = 0; c < C_; ++c) {
      const double* colsum = h_out_.get() + start_[c];
      const std::int64_t e0 = std::min_element(colsum, colsum + size(c)) - colsum;
      T mx;
      if constexpr (sizeof(T) == 4) {
        const auto bits = static_cast<std::uint32_t>(h_cls_max_[c]);
        std::memcpy(&mx, &bits, sizeof mx);
      } else {
        const auto bits = static_cast<std::uint64_t>(h_cls_max_[c]);
        std::memcpy(&mx, &bits, sizeof mx);
      }
      D[c] = static_cast<double>(std::sqrt(mx));
      picks_[c].push_back(e0);
      gains_[c].push_back(static_cast<double>(size(c)) * D[c] - colsum[e0]);
      r.pick[c] = static_cast<std::int32_t>(start_[c] + e0);
      r.step[c] = 0;
    }
    u = upload(r);
    launch_update(u);
  }

  // Step 1 for every class with k >= 2: all candidates at once (the bounds
  // after the medoid are far below F({e}), so lazy would evaluate most anyway).
  void lazy() {
    Round r;
    reset(r);
    bool any = false;
    for (std::int64_t c = 0; c < C_; ++c) any = any || budgets_[c] >= 2;
    // All classes, so that slot j is sorted position j.
    for (std::int64_t c = 0; c < C_ && any; ++c) {
      const std::size_t first = r.slots.size();
      for (std::int64_t j = start_[c]; j < start_[c + 1]; ++j) r.slots.push_back(static_cast<std::int32_t>(j));
      add_tiles(r, c, first);
    }
    std::vector<std::vector<Entry>> heaps(C_);
    if (any) {
      Uploaded u = upload(r);
      launch_whole<false>(r, u);
      download(n_);
      ++rounds_;
      for (std::int64_t c = 0; c < C_; ++c) {
        if (budgets_[c] < 2) continue;
        auto& h = heaps[c];
        h.reserve(size(c));
        for (std::int64_t e = 0; e < size(c); ++e)
          if (e != picks_[c][0]) h.push_back({h_out_[start_[c] + e], e, 1});
        std::make_heap(h.begin(), h.end(), below);
      }
    }
    std::vector<std::pair<std::int64_t, std::size_t>> owner;  // (class, heap entry count) per slot run
    std::vector<std::int64_t> idx;
    for (;;) {
      reset(r);
      owner.clear();
      idx.clear();
      bool any_pick = false;
      for (std::int64_t c = 0; c < C_; ++c) {
        std::int64_t& t = t_[c];
        if (t >= budgets_[c]) continue;
        auto& h = heaps[c];
        // A fresh top beats every other bound or ties it at a higher index:
        // exactly the naive greedy's choice.
        if (h.front().fresh_at == t) {
          std::pop_heap(h.begin(), h.end(), below);
          const Entry top = h.back();
          h.pop_back();
          picks_[c].push_back(top.idx);
          gains_[c].push_back(top.bound);
          r.pick[c] = static_cast<std::int32_t>(start_[c] + top.idx);
          r.step[c] = static_cast<std::int32_t>(t);
          ++t;
          any_pick = true;
          if (t >= budgets_[c]) continue;
        }
        const std::size_t first = r.slots.size();
        while (!h.empty() && h.front().fresh_at != t &&
               static_cast<std::int64_t>(r.slots.size() - first) < batch_) {
          std::pop_heap(h.begin(), h.end(), below);
          idx.push_back(h.back().idx);
          r.slots.push_back(static_cast<std::int32_t>(start_[c] + h.back().idx));
          h.pop_back();
        }
        if (r.slots.size() > first) {
          owner.push_back({c, r.slots.size() - first});
          add_tiles(r, c, first);
        }
      }
      if (!any_pick && r.slots.empty()) break;
      Uploaded u = upload(r);
      if (any_pick) launch_update(u);  // before the evaluations: they see the new cur
      if (r.slots.empty()) continue;
      launch_split(r, u);
      download(r.slots.size());
      ++rounds_;
      evaluations_ += static_cast<std::int64_t>(r.slots.size());
      std::size_t s = 0;
      for (const auto& [c, count] : owner) {
        auto& h = heaps[c];
        for (std::size_t j = 0; j < count; ++j, ++s) {
          h.push_back({h_out_[s], idx[s], t_[c]});
          std::push_heap(h.begin(), h.end(), below);
        }
      }
    }
  }

  // Every step, every candidate of every unfinished class: the definition.
  void naive() {
    Round r;
    std::vector<char> selected(n_, 0);
    std::vector<std::int64_t> base(C_, 0);  // slot of the class's first point
    for (std::int64_t c = 0; c < C_; ++c) selected[start_[c] + picks_[c][0]] = 1;
    for (;;) {
      reset(r);
      for (std::int64_t c = 0; c < C_; ++c) {
        if (t_[c] >= budgets_[c]) continue;
        const std::size_t first = r.slots.size();
        base[c] = static_cast<std::int64_t>(first);
        for (std::int64_t j = start_[c]; j < start_[c + 1]; ++j) r.slots.push_back(static_cast<std::int32_t>(j));
        add_tiles(r, c, first);
      }
      if (r.slots.empty()) break;
      Uploaded u = upload(r);
      launch_whole<false>(r, u);
      download(r.slots.size());
      ++rounds_;
      evaluations_ += static_cast<std::int64_t>(r.slots.size());
      reset(r);
      for (std::int64_t c = 0; c < C_; ++c) {
        if (t_[c] >= budgets_[c]) continue;
        const double* g = h_out_.get() + base[c];
        const char* sel = selected.data() + start_[c];
        std::int64_t best = -1;  // strict >: the lowest index wins ties
        for (std::int64_t e = 0; e < size(c); ++e)
          if (!sel[e] && (best < 0 || g[e] > g[best])) best = e;
        selected[start_[c] + best] = 1;
        picks_[c].push_back(best);
        gains_[c].push_back(g[best]);
        r.pick[c] = static_cast<std::int32_t>(start_[c] + best);
        r.step[c] = static_cast<std::int32_t>(t_[c]++);
      }
      u = upload(r);
      launch_update(u);
    }
  }

  void finish(const std::vector<double>& D, std::int64_t* out_idx, std::int64_t* out_weight,
              double* out_gain, double* out_obj) {
    PinnedArray<double> cur(n_);
    PinnedArray<std::int32_t> assign(n_);
    check(cudaMemcpyAsync(cur.get(), cur_.get(), n_ * sizeof(double), cudaMemcpyDeviceToHost, s_),
          "download");
    check(cudaMemcpyAsync(assign.get(), assign_.get(), n_ * sizeof(std::int32_t),
                          cudaMemcpyDeviceToHost, s_),
          "download");
    check(cudaStreamSynchronize(s_), "cudaStreamSynchronize");
    std::int64_t o = 0;
    for (std::int64_t c = 0; c < C_; ++c) {
      const std::int64_t lo = start_[c], nc = size(c), k = budgets_[c];
      for (std::int64_t t = 0; t < k; ++t) {
        out_idx[o + t] = rows_[lo + picks_[c][t]];
        out_gain[o + t] = gains_[c][t];
        out_weight[o + t] = 0;
      }
      for (std::int64_t i = 0; i < nc; ++i) ++out_weight[o + assign[lo + i]];
      double total = 0.0;  // F(S) = sum_i (D - cur_i), canonical blocked order
      for (std::int64_t b = 0; b < nc; b += kBlock) {
        double part = 0.0;
        for (std::int64_t i = b; i < std::min(nc, b + kBlock); ++i) part += D[c] - cur[lo + i];
        total += part;
      }
      out_obj[c] = total;
      o += k;
    }
  }

  std::int64_t n_;
  int d_;
  std::int64_t C_, batch_;
  cudaStream_t s_;
  std::vector<std::int64_t> start_, budgets_, rows_;
  DeviceArray<T> xs_;
  DeviceArray<double> cur_;
  DeviceArray<T> cur2_;
  DeviceArray<std::int32_t> assign_;
  DeviceArray<double> out_;
  DeviceArray<std::int64_t> start_dev_;
  DeviceArray<std::int32_t> cls_dev_;
  DeviceArray<unsigned long long> class_max_;
  PinnedArray<double> h_out_;
  PinnedArray<unsigned long long> h_cls_max_;
  std::unique_ptr<PinnedArray<unsigned char>> h_up_;
  std::unique_ptr<DeviceArray<unsigned char>> d_up_;
  std::unique_ptr<DeviceArray<double>> partial_;
  cudaEvent_t up_done_ = nullptr;
  std::size_t up_bytes_ = 0, smem_ = 0;
  int tile_points_ = kBlock;
  std::vector<std::vector<std::int64_t>> picks_;
  std::vector<std::vector<double>> gains_;
  std::vector<std::int64_t> t_;
  std::int64_t rounds_ = 0, evaluations_ = 0;
};

}  // namespace

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

std::string runtime_status() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
  }
  return count > 0 ? "ok" : "no CUDA device";
}

void select_per_class(const void* X, bool f64, std::int64_t n, std::int64_t d,
                      const std::int64_t* cls, std::int64_t num_classes,
                      const std::int64_t* budgets, int method, std::int64_t batch, int device,
                      std::uintptr_t stream, std::int64_t* out_idx, std::int64_t* out_weight,
                      double* out_gain, double* out_obj, std::int64_t* out_stats) {
  if (n > std::numeric_limits<std::int32_t>::max() || d > 65536)
    throw std::invalid_argument("select_per_class: the CUDA path takes n < 2^31 and d <= 65536; got n=" +
                                std::to_string(n) + ", d=" + std::to_string(d));
  if (method != 0 && method != 1) throw std::invalid_argument("method must be 0 (naive) or 1 (lazy)");
  if (batch < 1) throw std::invalid_argument("batch must be >= 1, got " + std::to_string(batch));
  crepe::check_classes(n, d, cls, num_classes, budgets);

  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    cudaGetLastError();
    throw std::runtime_error(std::string("crepe._cuda: no usable CUDA device (") +
                             (e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device") + ")");
  }
  if (device < 0 || device >= count)
    throw std::invalid_argument("device " + std::to_string(device) + " out of range: " +
                                std::to_string(count) + " CUDA device(s)");
  DeviceGuard guard(device);
  cudaPointerAttributes attr{};
  check(cudaPointerGetAttributes(&attr, X), "cudaPointerGetAttributes");
  if ((attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) || attr.device != device)
    throw std::invalid_argument("select_per_class: X is not device memory on cuda:" + std::to_string(device));
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  if (f64) {
    Solver<double> solver(static_cast<const double*>(X), n, d, cls, num_classes, budgets, batch, s);
    solver.run(method, out_idx, out_weight, out_gain, out_obj, out_stats);
  } else {
    Solver<float> solver(static_cast<const float*>(X), n, d, cls, num_classes, budgets, batch, s);
    solver.run(method, out_idx, out_weight, out_gain, out_obj, out_stats);
  }
}

}  // namespace crepe::cuda
