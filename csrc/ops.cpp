// libtorch C++ API that tch does not bind: PyTorch's multi-tensor fused AdamW
// (`at::_fused_adamw_`, CPU and CUDA kernels) and set-to-none gradients for
// `msclip::train::optim`, the TF32 switches for `msclip::autocast`, and the operator profiler
// for `msclip::profile`. Tensors come in as tch's
// `C_tensor` pointers (`at::Tensor*`); errors come back as strings (shim_error.h).
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/profiler_legacy.h>

#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "shim_error.h"

extern "C" {

// One AdamW step over n tensors of one group (same lr and weight decay), in place, with
// PyTorch's `_fused_adamw_` (amsgrad and maximize off, no grad scaling). `step` is the step
// number after this update (PyTorch increments `state_steps` before the kernel).
int msd_fused_adamw(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs, at::Tensor** exp_avg_sqs, int n,
                    double step, double lr, double beta1, double beta2, double weight_decay, double eps, char* err,
                    size_t errlen) {
  return msclip_shim::guarded(err, errlen, [&] {
    std::vector<at::Tensor> p, g, m, v, steps;
    for (int i = 0; i < n; ++i) {
      p.push_back(*params[i]);
      g.push_back(*grads[i]);
      m.push_back(*exp_avgs[i]);
      v.push_back(*exp_avg_sqs[i]);
      steps.push_back(at::full({}, step, params[i]->options().dtype(at::kFloat)));
    }
    c10::NoGradGuard no_grad;
    at::_fused_adamw_(p, g, m, v, {}, steps, lr, beta1, beta2, weight_decay, eps, false, false);
  });
}

// Drops the gradients of n tensors (PyTorch's `zero_grad(set_to_none=True)`): the next
// backward stores its gradient instead of zero-filling and adding into the old buffer.
int msd_grads_to_none(at::Tensor** ts, int n, char* err, size_t errlen) {
  return msclip_shim::guarded(err, errlen, [&] {
    for (int i = 0; i < n; ++i) ts[i]->mutable_grad().reset();
  });
}

// TF32 for fp32 matrix products (cuBLAS) and convolutions (cuDNN) on CUDA (libtorch's
// defaults: off for cuBLAS, on for cuDNN). A negative argument leaves that switch. Returns the
// previous state as bits (1: cuBLAS, 2: cuDNN).
// On failure returns -1 with the message in `err`.
int msd_tf32(int cublas, int cudnn, char* err, size_t errlen) {
  int was = -1;
  int rc = msclip_shim::guarded(err, errlen, [&] {
    auto& ctx = at::globalContext();
    was = (ctx.allowTF32CuBLAS() ? 1 : 0) | (ctx.allowTF32CuDNN() ? 2 : 0);
    if (cublas >= 0) ctx.setAllowTF32CuBLAS(cublas != 0);
    if (cudnn >= 0) ctx.setAllowTF32CuDNN(cudnn != 0);
  });
  return rc == 0 ? was : -1;
}

// Autocast state (thread-local in libtorch). `device`: 0 = CPU, 1 = CUDA; `dtype`: 0 = float32,
// 1 = float16, 2 = bfloat16 (our codes, mapped here to c10's, so Rust never hard-codes them).
static c10::DeviceType autocast_device(int device) {
  if (device == 0) return c10::DeviceType::CPU;
  if (device == 1) return c10::DeviceType::CUDA;
  throw std::invalid_argument("autocast device code must be 0 (CPU) or 1 (CUDA)");
}

static c10::ScalarType autocast_dtype(int dtype) {
  switch (dtype) {
    case 0: return at::kFloat;
    case 1: return at::kHalf;
    case 2: return at::kBFloat16;
    default: throw std::invalid_argument("autocast dtype code must be 0, 1 or 2");
  }
}

static int autocast_code(c10::ScalarType t) {
  if (t == at::kFloat) return 0;
  if (t == at::kHalf) return 1;
  if (t == at::kBFloat16) return 2;
  return -1;
}

// Reads whether autocast is on for `device` and its dtype code (-1: another dtype).
int msd_autocast_get(int device, int* enabled, int* dtype, char* err, size_t errlen) {
  return msclip_shim::guarded(err, errlen, [&] {
    auto d = autocast_device(device);
    *enabled = at::autocast::is_autocast_enabled(d) ? 1 : 0;
    *dtype = autocast_code(at::autocast::get_autocast_dtype(d));
  });
}

// Sets autocast on/off (`enabled` < 0: leave) and its dtype (`dtype` < 0: leave) for `device`.
int msd_autocast_set(int device, int enabled, int dtype, char* err, size_t errlen) {
  return msclip_shim::guarded(err, errlen, [&] {
    auto d = autocast_device(device);
    if (dtype >= 0) at::autocast::set_autocast_dtype(d, autocast_dtype(dtype));
    if (enabled >= 0) at::autocast::set_autocast_enabled(d, enabled != 0);
  });
}

// Enters (`delta` = 1) or leaves (-1) an autocast region, as `torch.autocast` does: the nesting
// count, and on leaving the outermost region the cache of casts (bf16 copies of fp32 weights).
int msd_autocast_nest(int delta, char* err, size_t errlen) {
  return msclip_shim::guarded(err, errlen, [&] {
    if (delta > 0) {
      at::autocast::increment_nesting();
    } else if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
  });
}

// libtorch's operator profiler (the legacy one behind `torch.autograd.profiler`), writing a
// Chrome trace of every ATen operator to `path` when stopped. One at a time per process.
// `g_profile` is guarded by `g_profile_lock` (start and stop may come from different threads).
static torch::autograd::profiler::RecordProfile* g_profile = nullptr;
static std::mutex g_profile_lock;

int msd_profile_start(const char* path, char* err, size_t errlen) {
  return msclip_shim::guarded(err, errlen, [&] {
    std::lock_guard<std::mutex> guard(g_profile_lock);
    if (g_profile) throw std::runtime_error("a profile is already being recorded");
    g_profile = new torch::autograd::profiler::RecordProfile(std::string(path));
  });
}

// Writes the trace and ends the profile; an error (e.g. the trace cannot be written) comes
// back in `err`. Nothing to stop is not an error.
int msd_profile_stop(char* err, size_t errlen) {
  return msclip_shim::guarded(err, errlen, [&] {
    std::lock_guard<std::mutex> guard(g_profile_lock);
    if (!g_profile) return;
    auto* p = g_profile;
    g_profile = nullptr;
    delete p;
  });
}

}  // extern "C"
