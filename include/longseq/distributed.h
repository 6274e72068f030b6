// Data-parallel training over torch.distributed's c10d: a process group of Gloo over TCP with a TCPStore
// rendezvous, configured from the environment as torchrun sets it (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE,
// LOCAL_RANK). The trainer splits each step's train.accum micro-batches among the processes and sums their
// gradients here, so a group of W processes takes the steps one process takes with the same accum
// (docs/distributed.md).
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

namespace longseq {

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Sums the tensors over the group in place, in buckets of about `bucket_bytes` (each flattened into one buffer,
  // one all-reduce per bucket). Float tensors of any shape; every process passes the same list.
  virtual void sum(const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes = 25 << 20) = 0;
  // Rank 0's values of the tensors, copied into every process's (in place).
  virtual void broadcast(const std::vector<torch::Tensor>& tensors) = 0;
  virtual void barrier() = 0;
};

// The group of this process when WORLD_SIZE > 1 (a rendezvous with the others, which may wait up to
// `timeout_s` for them), else null. Throws Error naming the variable for a malformed or missing setting, and
// when this build has no c10d / Gloo (distributed_available()).
std::unique_ptr<ProcessGroup> process_group_from_environment(double timeout_s = 300);

// WORLD_SIZE as a count (1 when unset), checked; no rendezvous.
int64_t world_size_from_environment();

// Whether this build has c10d with Gloo (Debian's LibTorch with libgloo-dev; see CMakeLists.txt).
bool distributed_available();

}  // namespace longseq
