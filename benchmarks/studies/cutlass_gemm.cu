// D = A B^T for bf16 A [M, K] (row-major) and B [N, K] (a linear layer's weight, row-major):
// CUTLASS 3 warp-specialized Hopper (sm_90a) GEMMs with TMA loads and a persistent stream-K tile
// scheduler, float32 accumulation. jackfield.kernels.cutlass_gemm compiles this file once per
// machine and calls it through ctypes; the config table below is what the engine's GEMM tuner
// times against cuBLAS per (rows, N, K).
//
// C interface (every function returns a cudaError_t-like int, 0 = success):
//   jf_gemm_num_configs()                      number of compiled configurations
//   jf_gemm_config_name(i)                     "tile MxNxK cluster CMxCN schedule"
//   jf_gemm_workspace(i, M, N, K, sched, sm_count, &bytes)
//   jf_gemm_run(i, A, B, D, M, N, K, sched, sm_count, workspace, bytes, stream)
// sched packs the tile schedule: mode | splits << 4 | swizzle << 12 | raster << 20, where
// mode is 0 heuristic, 1 data-parallel, 2 split-K (`splits` ways), 3 stream-K (the ping-pong
// kernels are always persistent data-parallel), swizzle the largest tile swizzle (1, 2, 4, 8) and
// raster 0 heuristic, 1 along M, 2 along N.

#include <cuda_runtime.h>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

using namespace cute;

namespace {

using Element = cutlass::bfloat16_t;
constexpr int kAlign = 8;  // 16 bytes: TMA needs K and N to be multiples of 8 elements

template <int TM, int TN, int TK, int CM, int CN, bool Cooperative>
struct Config {
  using Tile = Shape<Int<TM>, Int<TN>, Int<TK>>;
  using Cluster = Shape<Int<CM>, Int<CN>, _1>;
  using MainSchedule = cute::conditional_t<Cooperative, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                                           cutlass::gemm::KernelTmaWarpSpecializedPingpong>;
  using EpiSchedule = cute::conditional_t<Cooperative, cutlass::epilogue::TmaWarpSpecializedCooperative,
                                          cutlass::epilogue::TmaWarpSpecialized>;
  // Pingpong kernels take the persistent data-parallel scheduler; cooperative ones stream-K.
  using Scheduler = cute::conditional_t<Cooperative, cutlass::gemm::StreamKScheduler, cutlass::gemm::PersistentScheduler>;

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Tile, Cluster,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float,
      void, cutlass::layout::RowMajor, kAlign,           // no C operand: D = A B^T
      Element, cutlass::layout::RowMajor, kAlign, EpiSchedule>::CollectiveOp;

  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp,
      Element, cutlass::layout::RowMajor, kAlign,        // A = x [M, K]
      Element, cutlass::layout::ColumnMajor, kAlign,     // B = W^T, W stored [N, K]
      float, Tile, Cluster,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      MainSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue, Scheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

template <class Cfg>
typename Cfg::Gemm::Arguments make_args(const void* a, const void* b, void* d, int m, int n, int k, int sched,
                                        int sm_count) {
  using Gemm = typename Cfg::Gemm;
  using Kernel = typename Cfg::Kernel;
  auto sa = cutlass::make_cute_packed_stride(typename Kernel::StrideA{}, make_shape(m, k, 1));
  auto sb = cutlass::make_cute_packed_stride(typename Kernel::StrideB{}, make_shape(n, k, 1));
  auto sd = cutlass::make_cute_packed_stride(typename Kernel::StrideD{}, make_shape(m, n, 1));
  cutlass::KernelHardwareInfo hw;
  hw.device_id = 0;
  hw.sm_count = sm_count;
  typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                {m, n, k, 1},
                                {static_cast<const Element*>(a), sa, static_cast<const Element*>(b), sb},
                                {{1.0f, 0.0f}, nullptr, sd, static_cast<Element*>(d), sd},
                                hw};
  const int mode = sched & 0xf, splits = (sched >> 4) & 0xff, swizzle = (sched >> 12) & 0xff, raster = (sched >> 20) & 0xf;
  using Raster = cutlass::gemm::kernel::detail::RasterOrderOptions;
  args.scheduler.max_swizzle_size = swizzle > 0 ? swizzle : 1;
  args.scheduler.raster_order = raster == 1 ? Raster::AlongM : raster == 2 ? Raster::AlongN : Raster::Heuristic;
  if constexpr (cute::is_same_v<typename Cfg::Scheduler, cutlass::gemm::StreamKScheduler>) {
    using Mode = typename Kernel::TileScheduler::DecompositionMode;
    const Mode modes[] = {Mode::Heuristic, Mode::DataParallel, Mode::SplitK, Mode::StreamK};
    args.scheduler.decomposition_mode = modes[mode > 3 ? 0 : mode];
    args.scheduler.splits = mode == 2 && splits > 1 ? splits : 1;
  }
  return args;
}

template <class Cfg>
int workspace(int m, int n, int k, int sched, int sm_count, size_t* bytes) {
  auto args = make_args<Cfg>(nullptr, nullptr, nullptr, m, n, k, sched, sm_count);
  if (Cfg::Gemm::can_implement(args) != cutlass::Status::kSuccess) return -1;
  *bytes = Cfg::Gemm::get_workspace_size(args);
  return 0;
}

template <class Cfg>
int run(const void* a, const void* b, void* d, int m, int n, int k, int sched, int sm_count, void* ws,
        size_t ws_bytes, cudaStream_t stream) {
  auto args = make_args<Cfg>(a, b, d, m, n, k, sched, sm_count);
  typename Cfg::Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return -1;
  if (Cfg::Gemm::get_workspace_size(args) > ws_bytes) return -2;
  if (gemm.initialize(args, ws, stream) != cutlass::Status::kSuccess) return -3;
  if (gemm.run(stream) != cutlass::Status::kSuccess) return -4;
  return static_cast<int>(cudaGetLastError());
}

struct Entry {
  const char* name;
  int (*workspace)(int, int, int, int, int, size_t*);
  int (*run)(const void*, const void*, void*, int, int, int, int, int, void*, size_t, cudaStream_t);
};

#define JF_CONFIG(NAME, TM, TN, TK, CM, CN, COOP)                                             \
  Entry{NAME, &workspace<Config<TM, TN, TK, CM, CN, COOP>>, &run<Config<TM, TN, TK, CM, CN, COOP>>}

const Entry kConfigs[] = {
    JF_CONFIG("128x256x64 c2x1 cooperative", 128, 256, 64, 2, 1, true),
    JF_CONFIG("128x256x64 c1x2 cooperative", 128, 256, 64, 1, 2, true),
    JF_CONFIG("256x128x64 c1x2 cooperative", 256, 128, 64, 1, 2, true),
    JF_CONFIG("256x128x64 c2x1 cooperative", 256, 128, 64, 2, 1, true),
    JF_CONFIG("128x128x64 c2x1 cooperative", 128, 128, 64, 2, 1, true),
    JF_CONFIG("64x256x64 c2x1 pingpong", 64, 256, 64, 2, 1, false),
    JF_CONFIG("64x256x64 c1x2 pingpong", 64, 256, 64, 1, 2, false),
    JF_CONFIG("128x128x64 c2x1 pingpong", 128, 128, 64, 2, 1, false),
    JF_CONFIG("128x128x64 c1x2 pingpong", 128, 128, 64, 1, 2, false),
    JF_CONFIG("64x128x128 c2x1 pingpong", 64, 128, 128, 2, 1, false),
};
constexpr int kNumConfigs = sizeof(kConfigs) / sizeof(kConfigs[0]);

}  // namespace

extern "C" {

int jf_gemm_num_configs() { return kNumConfigs; }

const char* jf_gemm_config_name(int i) { return i >= 0 && i < kNumConfigs ? kConfigs[i].name : ""; }

int jf_gemm_workspace(int i, int m, int n, int k, int sched, int sm_count, size_t* bytes) {
  if (i < 0 || i >= kNumConfigs) return -5;
  return kConfigs[i].workspace(m, n, k, sched, sm_count, bytes);
}

int jf_gemm_run(int i, const void* a, const void* b, void* d, int m, int n, int k, int sched, int sm_count,
                void* ws, size_t ws_bytes, cudaStream_t stream) {
  if (i < 0 || i >= kNumConfigs) return -5;
  return kConfigs[i].run(a, b, d, m, n, k, sched, sm_count, ws, ws_bytes, stream);
}

}  // extern "C"
