// Reversible residual stack (Kitaev et al. 2020, "Reformer", sec. 3, eq. 9;
// after Gomez et al. 2017, RevNet). Forward without a graph, keeping only the
// last (Y1, Y2); backward one block at a time from the top:
//   G = FF(Y1) recomputed with a graph, dY1 += dG/dY1^T dY2, X2 = Y2 - G;
//   F = mix(X2) recomputed with a graph, dX2 = dY2 + dF/dX2^T dY1, X1 = Y1 - F.
// Parameter gradients accumulate as the recomputed graphs are back-propagated
// (re-entrant autograd, as activation checkpointing does), so training uses
// loss.backward(). The feed-forward's recomputation runs slice by slice.
#include <ATen/CPUGeneratorImpl.h>

#include "longseq/common.h"
#include "longseq/layers.h"
#include "longseq/recompute.h"

namespace longseq {

namespace {
thread_local bool recomputing = false;
}  // namespace

bool in_recompute() { return recomputing; }
RecomputeScope::RecomputeScope() : previous_(recomputing) { recomputing = true; }
RecomputeScope::~RecomputeScope() { recomputing = previous_; }

namespace {

struct StackArgs {
  std::vector<Block>* blocks;
  MixContext ctx;  // without state: training does not stream
  int64_t ff_chunks;
  std::vector<torch::Tensor> rng_mix, rng_ff;  // generator state before each branch (dropout replay)
};

torch::Tensor rng_state() { return at::detail::getDefaultCPUGenerator().get_state(); }
void set_rng_state(const torch::Tensor& s) {
  at::Generator g = at::detail::getDefaultCPUGenerator();
  g.set_state(s);
}

class ReversibleFunction : public torch::autograd::Function<ReversibleFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x1,
                                                const torch::Tensor& x2, int64_t args_ptr) {
    auto* a = reinterpret_cast<StackArgs*>(args_ptr);
    torch::NoGradGuard ng;
    torch::Tensor y1 = x1, y2 = x2;
    for (auto& block : *a->blocks) {
      a->rng_mix.push_back(rng_state());
      y1 = y1 + block->mix_branch(y2, a->ctx);
      a->rng_ff.push_back(rng_state());
      y2 = y2 + block->ff_branch(y1, a->ff_chunks);
    }
    ctx->save_for_backward({y1, y2});
    ctx->saved_data["args"] = args_ptr;
    return {y1, y2};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    std::unique_ptr<StackArgs> a(reinterpret_cast<StackArgs*>(ctx->saved_data["args"].toInt()));
    auto saved = ctx->get_saved_variables();
    torch::Tensor y1 = saved[0].detach(), y2 = saved[1].detach();
    torch::Tensor dy1 = grads[0].defined() ? grads[0] : torch::zeros_like(y1);
    torch::Tensor dy2 = grads[1].defined() ? grads[1] : torch::zeros_like(y2);
    const auto rng_now = rng_state();
    RecomputeScope recompute;
    torch::AutoGradMode enable(true);
    auto& blocks = *a->blocks;
    for (int64_t i = static_cast<int64_t>(blocks.size()) - 1; i >= 0; --i) {
      auto& block = blocks[i];
      // G = FF(Y1), slice by slice: each slice's graph lives only for its own backward.
      set_rng_state(a->rng_ff[i]);
      const int64_t T = y1.size(1), chunks = std::max<int64_t>(1, std::min(a->ff_chunks, T));
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
      // F = mix(X2).
      set_rng_state(a->rng_mix[i]);
      auto x2v = x2.detach().requires_grad_(true);
      auto f = block->mix_branch(x2v, a->ctx);
      torch::autograd::backward({f}, {dy1});
      auto x1 = y1 - f.detach();
      dy2 = dy2 + x2v.grad();
      y1 = x1, y2 = x2;
    }
    set_rng_state(rng_now);
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
  auto* args = new StackArgs{&blocks, ctx, ff_chunks, {}, {}};  // owned by the backward
  args->ctx.state = nullptr;
  auto ys = ReversibleFunction::apply(x, x, reinterpret_cast<int64_t>(args));
  return (ys[0] + ys[1]) / 2;
}

}  // namespace longseq
