// A small C API over libtorch's distributed engine (c10d): TCPStore rendezvous and the Gloo
// process group, for `msclip::dist`. Tensors come in as tch's `C_tensor` pointers (that is,
// `at::Tensor*`); errors come back as strings (C++ exceptions never cross into Rust).
// Built by build.rs with the `cc` crate; recipe and flags: docs/stack.md ("Distributed").
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include "dist_group.h"

using msclip_dist::Group;
using msclip_shim::guarded;

namespace {

void wait_all(Group* g, std::vector<c10::intrusive_ptr<c10d::Work>>& works) {
  for (auto& w : works) {
    w->wait(g->timeout);
  }
}

}  // namespace

extern "C" {

// Forms the group: rank 0 serves the store at host:port; every rank connects to it. `iface`
// (may be empty) names the network interface for Gloo's transport; otherwise loopback for a
// loopback host, else this machine's hostname.
void* msd_init(const char* host, int port, int rank, int world, int timeout_ms, const char* iface, char* err,
               size_t errlen) {
  Group* out = nullptr;
  guarded(err, errlen, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto store = msclip_dist::make_store(host, port, rank, world, timeout);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    std::string h(host);
    if (iface != nullptr && iface[0] != '\0') {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(iface));
    } else if (h == "127.0.0.1" || h == "localhost" || h == "::1") {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    out = new Group{store, pg, timeout};
  });
  return out;
}

void msd_free(void* g) { delete static_cast<Group*>(g); }

// In-place sum of each tensor over ranks; all reductions run concurrently, then are awaited.
int msd_allreduce_sum(void* gp, at::Tensor** ts, int n, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    auto* g = static_cast<Group*>(gp);
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (int i = 0; i < n; ++i) {
      std::vector<at::Tensor> one{*ts[i]};
      works.push_back(g->pg->allreduce(one));
    }
    wait_all(g, works);
  });
}

// `out` ([world · n, ...], contiguous) receives every rank's `in` ([n, ...]) in rank order.
int msd_allgather(void* gp, at::Tensor* out, at::Tensor* in, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    auto* g = static_cast<Group*>(gp);
    std::vector<std::vector<at::Tensor>> outs{out->chunk(g->pg->getSize(), 0)};
    std::vector<at::Tensor> ins{in->contiguous()};
    auto w = g->pg->allgather(outs, ins);
    w->wait(g->timeout);
  });
}

// Every rank's tensors take rank `root`'s values.
int msd_broadcast(void* gp, at::Tensor** ts, int n, int root, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    auto* g = static_cast<Group*>(gp);
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    c10d::BroadcastOptions o;
    o.rootRank = root;
    for (int i = 0; i < n; ++i) {
      std::vector<at::Tensor> one{*ts[i]};
      works.push_back(g->pg->broadcast(one, o));
    }
    wait_all(g, works);
  });
}

int msd_barrier(void* gp, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    auto* g = static_cast<Group*>(gp);
    g->pg->barrier()->wait(g->timeout);
  });
}

}  // extern "C"
