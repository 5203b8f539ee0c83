// NCCL process groups for CUDA tensors (`cuda` feature only; needs nccl.h and the CUDA
// runtime headers from the nvidia-* wheels). The collectives are csrc/dist.cpp's, which work
// on any c10d::Backend.
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include "dist_group.h"

extern "C" {

void* msd_init_nccl(const char* host, int port, int rank, int world, int timeout_ms, char* err, size_t errlen) {
  msclip_dist::Group* out = nullptr;
  msclip_shim::guarded(err, errlen, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto store = msclip_dist::make_store(host, port, rank, world, timeout);
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = timeout;
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, opts);
    out = new msclip_dist::Group{store, pg, timeout};
  });
  return out;
}

}  // extern "C"
