// Shared by csrc/dist.cpp (Gloo) and csrc/dist_nccl.cpp (NCCL, `cuda` feature): the group
// handle behind the C API and the TCPStore rendezvous (errors: shim_error.h).
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "shim_error.h"

#include <chrono>
#include <string>

namespace msclip_dist {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> pg;
  std::chrono::milliseconds timeout;
};

// Rank 0 serves the store at host:port; every rank connects and waits for all `world`.
inline c10::intrusive_ptr<c10d::Store> make_store(const char* host, int port, int rank, int world,
                                                  std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions o;
  o.port = static_cast<std::uint16_t>(port);
  o.isServer = rank == 0;
  o.numWorkers = static_cast<std::size_t>(world);
  o.waitWorkers = true;
  o.timeout = timeout;
  return c10::make_intrusive<c10d::TCPStore>(std::string(host), o);
}

}  // namespace msclip_dist
