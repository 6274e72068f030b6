// Reversible residual stack (Kitaev et al. 2020, "Reformer", sec. 3, eq. 9;
// after Gomez et al. 2017, RevNet). Forward without a graph, keeping only the
// last (Y1, Y2); backward one block at a time from the top:
//   G = FF(Y1) recomputed with a graph, dY1 += dG/dY1^T dY2, X2 = Y2 - G;
//   F = mix(X2) recomputed with a graph, dX2 = dY2 + dF/dX2^T dY1, X1 = Y1 - F.
// Parameter gradients accumulate as the recomputed graphs are back-propagated
// (re-entrant autograd, as activation checkpointing does), so training uses
// loss.backward(). The feed-forward's recomputation runs slice by slice.
#include <ATen/CPUGeneratorImpl.h>

#include <atomic>

#include "longseq/common.h"
#include "longseq/layers.h"
#include "longseq/recompute.h"

namespace longseq {

namespace {
thread_local bool recomputing = false;
thread_local ForwardRecord* current_record = nullptr;
std::atomic<int64_t> live_records{0};
}  // namespace

ForwardRecord::ForwardRecord() { ++live_records; }
ForwardRecord::~ForwardRecord() { --live_records; }

void ForwardRecord::put(const void* owner, const std::string& name, torch::Tensor value) {
  if (!entries_.emplace(std::make_pair(owner, name), std::move(value)).second)
    throw Error("recompute: '" + name + "' recorded twice in one forward (a module called twice in one block?)");
}

const torch::Tensor& ForwardRecord::get(const void* owner, const std::string& name) const {
  auto it = entries_.find({owner, name});
  if (it == entries_.end())
    throw Error("recompute: the forward being recomputed recorded no '" + name +
                "' (train/eval mode changed between the forward and its backward?)");
  return it->second;
}

int64_t live_forward_records() { return live_records.load(); }
bool in_recompute() { return recomputing; }

RecordScope::RecordScope(ForwardRecord* record, bool recompute)
    : previous_record_(current_record), previous_recompute_(recomputing) {
  current_record = record;
  recomputing = recompute;
}
RecordScope::~RecordScope() {
  current_record = previous_record_;
  recomputing = previous_recompute_;
}

torch::Tensor replay_or_record(const void* owner, const std::string& name, const std::function<torch::Tensor()>& make) {
  if (recomputing) {
    if (!current_record) throw Error("recompute: no record of the forward to replay for '" + name + "'");
    return current_record->get(owner, name);
  }
  auto value = make();
  if (current_record) current_record->put(owner, name, value);
  return value;
}

uint64_t draw_seed(uint64_t stream, uint64_t index) {
  // splitmix64 (Steele et al. 2014) over the stream, then over the index: distinct streams do not overlap.
  auto mix = [](uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  return mix(mix(stream) ^ index);
}

namespace {

// What one forward of the stack leaves for its backward, owned by its autograd node (freed with the graph,
// read-only in the backward so that a retained graph can be back-propagated again).
struct StackRecord : torch::CustomClassHolder {
  std::vector<Block> blocks;  // holders: the modules outlive the graph
  MixContext ctx;             // without state: training does not stream
  int64_t ff_chunks = 1;
  std::vector<torch::Tensor> rng_mix, rng_ff;         // generator state before each branch (dropout replay)
  std::vector<std::unique_ptr<ForwardRecord>> mixers;  // what each block's mixer drew
};

torch::Tensor rng_state() { return at::detail::getDefaultCPUGenerator().get_state(); }
void set_rng_state(const torch::Tensor& s) {
  at::Generator g = at::detail::getDefaultCPUGenerator();
  g.set_state(s);
}

// Restores the default generator on every exit from the backward.
struct RngRestore {
  torch::Tensor saved = rng_state();
  ~RngRestore() { set_rng_state(saved); }
};

class ReversibleFunction : public torch::autograd::Function<ReversibleFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x1,
                                                const torch::Tensor& x2, c10::intrusive_ptr<StackRecord> rec) {
    torch::NoGradGuard ng;
    torch::Tensor y1 = x1, y2 = x2;
    for (auto& block : rec->blocks) {
      rec->rng_mix.push_back(rng_state());
      rec->mixers.push_back(std::make_unique<ForwardRecord>());
      {
        RecordScope record(rec->mixers.back().get(), /*recompute=*/false);
        y1 = y1 + block->mix_branch(y2, rec->ctx);
      }
      rec->rng_ff.push_back(rng_state());
      y2 = y2 + block->ff_branch(y1, rec->ff_chunks);
    }
    ctx->save_for_backward({y1, y2});
    ctx->saved_data["record"] = c10::IValue::make_capsule(std::move(rec));
    return {y1, y2};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto capsule = ctx->saved_data["record"].toCapsule();
    auto& rec = *static_cast<StackRecord*>(capsule.get());  // not modified: a retained graph may run again
    auto saved = ctx->get_saved_variables();
    torch::Tensor y1 = saved[0].detach(), y2 = saved[1].detach();
    torch::Tensor dy1 = grads[0].defined() ? grads[0] : torch::zeros_like(y1);
    torch::Tensor dy2 = grads[1].defined() ? grads[1] : torch::zeros_like(y2);
    RngRestore restore;
    torch::AutoGradMode enable(true);
    MixContext mctx = rec.ctx;  // a copy: the record stays as the forward left it
    for (int64_t i = static_cast<int64_t>(rec.blocks.size()) - 1; i >= 0; --i) {
      auto& block = rec.blocks[i];
      // G = FF(Y1), slice by slice: each slice's graph lives only for its own backward.
      set_rng_state(rec.rng_ff[i]);
      const int64_t T = y1.size(1), chunks = std::max<int64_t>(1, std::min(rec.ff_chunks, T));
      const int64_t step = (T + chunks - 1) / chunks;
      std::vector<torch::Tensor> g_parts, dy1_parts;
      for (int64_t t = 0; t < T; t += step) {
        const int64_t len = std::min(step, T - t);
        auto y1c = y1.narrow(1, t, len).detach().requires_grad_(true);
        auto g = block->ff_branch(y1c, 1);
        torch::autograd::backward({g}, {dy2.narrow(1, t, len).contiguous()});
        g_parts.push_back(g.detach());
        dy1_parts.push_back(y1c.grad());
      }
      auto x2 = y2 - torch::cat(g_parts, 1);
      dy1 = dy1 + torch::cat(dy1_parts, 1);
      // F = mix(X2), replaying this forward's draws.
      set_rng_state(rec.rng_mix[i]);
      auto x2v = x2.detach().requires_grad_(true);
      torch::Tensor f;
      {
        RecordScope replay(rec.mixers[i].get(), /*recompute=*/true);
        f = block->mix_branch(x2v, mctx);
      }
      torch::autograd::backward({f}, {dy1});
      auto x1 = y1 - f.detach();
      dy2 = dy2 + x2v.grad();
      y1 = x1, y2 = x2;
    }
    return {dy1, dy2, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor reversible_stack(std::vector<Block>& blocks, const torch::Tensor& x, MixContext& ctx, ModelState* state,
                               int64_t ff_chunks) {
  ctx.carry_allowed = false;
  if (state || !torch::GradMode::is_enabled() || !x.requires_grad()) {
    // No backward will come (inference, decoding): the same equations, no bookkeeping.
    torch::Tensor y1 = x, y2 = x;
    for (size_t i = 0; i < blocks.size(); ++i) {
      ctx.state = state ? state->layers[i].get() : nullptr;
      y1 = y1 + blocks[i]->mix_branch(y2, ctx);
      y2 = y2 + blocks[i]->ff_branch(y1, ff_chunks);
    }
    return (y1 + y2) / 2;
  }
  auto rec = c10::make_intrusive<StackRecord>();
  rec->blocks = blocks;
  rec->ctx = ctx;
  rec->ctx.state = nullptr;
  rec->ff_chunks = ff_chunks;
  auto ys = ReversibleFunction::apply(x, x, std::move(rec));
  return (ys[0] + ys[1]) / 2;
}

}  // namespace longseq
