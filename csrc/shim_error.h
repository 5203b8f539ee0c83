// Shared by the C++ shims (csrc/ops.cpp, csrc/dist.cpp, csrc/dist_nccl.cpp): the error
// convention of every `msd_*` function — a non-zero return and a NUL-terminated message in
// the caller's buffer (read by `src/shim.rs`).
#pragma once

#include <c10/util/Exception.h>

#include <cstring>
#include <exception>

namespace msclip_shim {

inline void set_err(char* err, size_t len, const char* msg) {
  if (err == nullptr || len == 0) return;
  std::strncpy(err, msg, len - 1);
  err[len - 1] = '\0';
}

// Runs `f`, turning any exception into an error string and a return value of 1.
template <typename F>
int guarded(char* err, size_t len, F&& f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    set_err(err, len, e.what_without_backtrace());
  } catch (const std::exception& e) {
    set_err(err, len, e.what());
  } catch (...) {
    set_err(err, len, "unknown C++ exception");
  }
  return 1;
}

}  // namespace msclip_shim
