// Gradients summed over a process group while the backward runs (distributed.h, OverlappedGradientSum).
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <mutex>
#include <utility>

#include "longseq/common.h"
#include "longseq/distributed.h"

namespace longseq {

struct OverlappedGradientSum::State {
  explicit State(ProcessGroup& g) : group(g) {}
  ProcessGroup& group;
  std::vector<torch::Tensor> params;
  std::vector<std::vector<size_t>> members;  // per bucket: indices into params
  std::vector<size_t> bucket_of;             // per parameter
  std::vector<int64_t> waiting;              // per bucket: parameters not yet accumulated in the armed backward
  std::vector<char> seen;                    // per parameter: accumulated in the armed backward
  std::vector<torch::Tensor> flat;           // per bucket: the buffer being summed
  std::vector<std::function<void()>> done;   // per bucket: waits for its sum; empty = not started
  std::vector<int64_t> hooked;               // per bucket: parameters whose accumulator calls back
  // What grad_accumulator returns (a shared_ptr in LibTorch 1.x, an intrusive_ptr in 2.x), kept alive: the hooks
  // live on the accumulators.
  using Accumulator = decltype(torch::autograd::impl::grad_accumulator(std::declval<const torch::Tensor&>()));
  std::vector<Accumulator> accumulators;
  bool armed = false;
  int64_t early = 0;
  std::mutex mu;  // the engine may run accumulators on its worker threads

  void start(size_t b) {
    std::vector<torch::Tensor> parts;
    for (size_t i : members[b]) {
      auto& p = params[i];
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);  // unused here, maybe used elsewhere
      parts.push_back(p.grad().reshape({-1}));
    }
    flat[b] = torch::cat(parts);
    done[b] = group.start_sum(flat[b]);
  }

  void ready(size_t i) {
    std::lock_guard<std::mutex> lock(mu);
    if (!armed || seen[i]) return;
    seen[i] = 1;
    const size_t b = bucket_of[i];
    if (--waiting[b] == 0 && !done[b]) {
      start(b);
      ++early;
    }
  }
};

namespace {

// Calls back after a parameter's gradient accumulator has added this backward's gradient.
struct AccumulatedHook : torch::autograd::FunctionPostHook {
  AccumulatedHook(std::weak_ptr<OverlappedGradientSum::State> s, size_t i) : state(std::move(s)), index(i) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    if (auto s = state.lock()) s->ready(index);
    return outputs;
  }
  std::weak_ptr<OverlappedGradientSum::State> state;
  size_t index;
};

}  // namespace

OverlappedGradientSum::OverlappedGradientSum(ProcessGroup& group, const std::vector<torch::Tensor>& params,
                                             int64_t bucket_bytes)
    : state_(std::make_shared<State>(group)) {
  State& s = *state_;
  s.params.assign(params.rbegin(), params.rend());  // a backward finishes the last layers' gradients first
  s.bucket_of.resize(s.params.size());
  int64_t bytes = bucket_bytes;
  for (size_t i = 0; i < s.params.size(); ++i) {
    if (bytes >= bucket_bytes) s.members.emplace_back(), bytes = 0;
    s.members.back().push_back(i);
    s.bucket_of[i] = s.members.size() - 1;
    bytes += s.params[i].numel() * static_cast<int64_t>(s.params[i].element_size());
  }
  s.hooked.assign(s.members.size(), 0);
  for (size_t i = 0; i < s.params.size(); ++i) {
    const auto& p = s.params[i];
    if (!p.requires_grad() || !p.is_leaf()) continue;  // no accumulator: its bucket starts without it
    auto acc = torch::autograd::impl::grad_accumulator(p);
    if (!acc) continue;
    acc->add_post_hook(std::make_unique<AccumulatedHook>(state_, i));
    s.accumulators.push_back(std::move(acc));
    ++s.hooked[s.bucket_of[i]];
  }
  s.flat.resize(s.members.size());
  s.done.resize(s.members.size());
}

void OverlappedGradientSum::arm() {
  State& s = *state_;
  std::lock_guard<std::mutex> lock(s.mu);
  s.waiting = s.hooked;
  s.seen.assign(s.params.size(), 0);
  s.early = 0;
  s.armed = true;
}

void OverlappedGradientSum::finish() {
  State& s = *state_;
  std::lock_guard<std::mutex> lock(s.mu);
  if (!s.armed) throw Error("OverlappedGradientSum::finish without arm: no backward was armed");
  for (size_t b = 0; b < s.members.size(); ++b)
    if (!s.done[b]) s.start(b);
  for (size_t b = 0; b < s.members.size(); ++b) {
    s.done[b]();
    int64_t at = 0;
    for (size_t i : s.members[b]) {
      auto g = s.params[i].mutable_grad();
      g.copy_(s.flat[b].narrow(0, at, g.numel()).view_as(g));
      at += g.numel();
    }
    s.done[b] = nullptr;
    s.flat[b] = torch::Tensor();
  }
  s.armed = false;
}

int64_t OverlappedGradientSum::started_during_backward() const { return state_->early; }
int64_t OverlappedGradientSum::buckets() const { return static_cast<int64_t>(state_->members.size()); }

}  // namespace longseq
