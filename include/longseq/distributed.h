// Data-parallel training over torch.distributed's c10d: a process group of Gloo over TCP with a TCPStore
// rendezvous, configured from the environment as torchrun sets it (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE,
// LOCAL_RANK). The trainer splits each step's train.accum micro-batches among the processes and sums their
// gradients here, so a group of W processes takes the steps one process takes with the same accum
// (docs/distributed.md).
#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace longseq {

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Starts summing `flat` (one contiguous tensor; every process passes its own of the same size) over the group in
  // place and returns what waits for the sum to arrive. The call returns at once; the sum runs on the group's threads.
  virtual std::function<void()> start_sum(const torch::Tensor& flat) = 0;
  // Sums the tensors over the group in place, in buckets of about `bucket_bytes` (each flattened into one buffer,
  // one all-reduce per bucket). Float tensors of any shape; every process passes the same list.
  void sum(const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes = 25 << 20);
  // Rank 0's values of the tensors, copied into every process's (in place).
  virtual void broadcast(const std::vector<torch::Tensor>& tensors) = 0;
  virtual void barrier() = 0;
};

// The parameters' gradients summed over a group while the backward that finishes them runs, as PyTorch's
// DistributedDataParallel does (Li et al. 2020, "PyTorch Distributed", sec. 3.2.3): the parameters in buckets of about
// bucket_bytes in reverse order (the order a backward finishes their gradients), each bucket's all-reduce started
// by a hook on its parameters' gradient accumulators as soon as the last of them has accumulated. The buckets are
// fixed at construction, so every step sums the same buffers the same way.
class OverlappedGradientSum {
 public:
  OverlappedGradientSum(ProcessGroup& group, const std::vector<torch::Tensor>& params, int64_t bucket_bytes);
  // The next backward leaves the gradients final (the step's last micro-batch): start each bucket as it completes.
  void arm();
  // After that backward: starts the buckets still waiting (a parameter the backward did not reach contributes zeros
  // and gets a zero gradient), waits for every sum and writes it back into the gradients.
  void finish();
  // Buckets the last armed backward started before finish(), and buckets in all.
  int64_t started_during_backward() const;
  int64_t buckets() const;

  struct State;  // shared with the hooks, which outlive nothing: they hold it weakly

 private:
  std::shared_ptr<State> state_;
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
