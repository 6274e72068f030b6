// c10d process groups for data-parallel training (distributed.h).
#include "longseq/distributed.h"

#include <cstdlib>
#include <string>

#include "longseq/common.h"

#ifdef LONGSEQ_DISTRIBUTED
#define USE_C10D_GLOO 1  // ProcessGroupGloo.hpp declares its class only under this
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif

namespace longseq {

namespace {

// An environment variable as a whole number in [lo, hi]; `fallback` when unset (-1: required).
int64_t env_count(const char* name, int64_t lo, int64_t hi, int64_t fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) {
    if (fallback >= 0) return fallback;
    throw Error(std::string(name) + " is not set; a process group (WORLD_SIZE > 1) needs MASTER_ADDR, MASTER_PORT, "
                "RANK and WORLD_SIZE, as torchrun sets them (docs/distributed.md)");
  }
  const std::string s = v;
  if (s.size() > 9 || s.find_first_not_of("0123456789") != std::string::npos || std::stoll(s) < lo ||
      std::stoll(s) > hi)
    throw Error(std::string(name) + " is \"" + s + "\", not a whole number in [" + std::to_string(lo) + ", " +
                std::to_string(hi) + "]");
  return std::stoll(s);
}

#ifdef LONGSEQ_DISTRIBUTED

class GlooGroup : public ProcessGroup {
 public:
  GlooGroup(const std::string& addr, int port, int rank, int size, double timeout_s) : rank_(rank), size_(size) {
    const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
    ::c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(port);
    so.isServer = rank == 0;
    so.numWorkers = static_cast<std::size_t>(size);
    so.waitWorkers = true;
    so.timeout = timeout;
    try {
      store_ = c10::make_intrusive<::c10d::TCPStore>(addr, so);
      auto opts = ::c10d::ProcessGroupGloo::Options::create(timeout);
      // GLOO_SOCKET_IFNAME names the interface, as for PyTorch; a loopback master binds the loopback; else the
      // address this machine's hostname resolves to (Gloo falls back to the loopback when it does not resolve).
      const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
      if (ifname && *ifname) opts->devices.push_back(::c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      else if (addr == "localhost" || addr.rfind("127.", 0) == 0)
        opts->devices.push_back(::c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      else opts->devices.push_back(::c10d::ProcessGroupGloo::createDefaultDevice());
      opts->threads = 2;
      pg_ = c10::make_intrusive<::c10d::ProcessGroupGloo>(store_, rank, size, opts);
    } catch (const std::exception& e) {
      throw Error("process group: rendezvous at " + addr + ":" + std::to_string(port) + " as rank " +
                  std::to_string(rank) + " of " + std::to_string(size) + " failed: " + first_line(e.what()));
    }
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  std::function<void()> start_sum(const torch::Tensor& flat) override {
    std::vector<torch::Tensor> one{flat};
    auto work = pg_->allreduce(one);
    return [work] { work->wait(); };
  }

  void broadcast(const std::vector<torch::Tensor>& tensors) override {
    for (const auto& t : tensors) {
      std::vector<torch::Tensor> one{t.is_contiguous() ? t : t.contiguous()};
      pg_->broadcast(one)->wait();
      if (!t.is_contiguous()) t.copy_(one[0]);
    }
  }

  void barrier() override { pg_->barrier()->wait(); }

 private:
  static std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

  int rank_, size_;
  c10::intrusive_ptr<::c10d::Store> store_;
  c10::intrusive_ptr<::c10d::ProcessGroupGloo> pg_;
};

#endif

}  // namespace

void ProcessGroup::sum(const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes) {
  std::vector<torch::Tensor> bucket;
  int64_t bytes = 0;
  auto flush = [&] {
    if (bucket.empty()) return;
    std::vector<torch::Tensor> flat;
    for (const auto& t : bucket) flat.push_back(t.reshape({-1}));
    auto all = torch::cat(flat);
    start_sum(all)();
    int64_t at = 0;
    for (auto& t : bucket) {
      t.copy_(all.narrow(0, at, t.numel()).view_as(t));
      at += t.numel();
    }
    bucket.clear(), bytes = 0;
  };
  for (const auto& t : tensors) {
    bucket.push_back(t);
    bytes += t.numel() * static_cast<int64_t>(t.element_size());
    if (bytes >= bucket_bytes) flush();
  }
  flush();
}

bool distributed_available() {
#ifdef LONGSEQ_DISTRIBUTED
  return true;
#else
  return false;
#endif
}

int64_t world_size_from_environment() { return env_count("WORLD_SIZE", 1, 1 << 20, 1); }

std::unique_ptr<ProcessGroup> process_group_from_environment(double timeout_s) {
  const int64_t size = world_size_from_environment();
  if (size == 1) return nullptr;
  const int64_t rank = env_count("RANK", 0, size - 1, -1);
  env_count("LOCAL_RANK", 0, size - 1, 0);  // checked only: the processes of one machine share its cores alike
  const int64_t port = env_count("MASTER_PORT", 1, 65535, -1);
  const char* addr = std::getenv("MASTER_ADDR");
  if (!addr || !*addr) env_count("MASTER_ADDR", 0, 0, -1);  // throws: not set
#ifdef LONGSEQ_DISTRIBUTED
  return std::make_unique<GlooGroup>(addr, static_cast<int>(port), static_cast<int>(rank), static_cast<int>(size),
                                     timeout_s);
#else
  (void)rank, (void)port, (void)timeout_s;
  throw Error("WORLD_SIZE is " + std::to_string(size) + " but this build has no c10d process groups (it needs "
              "Debian's LibTorch with libgloo-dev; see docs/distributed.md)");
#endif
}

}  // namespace longseq
