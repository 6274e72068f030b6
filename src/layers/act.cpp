// ACT over depth (act.h): Dehghani et al. 2019, sec. 2.2, the "basic" update of their ACT listing.
#include "longseq/act.h"

#include "longseq/common.h"

namespace longseq {

ActState act_start(int64_t B, int64_t T, int64_t C, const torch::Tensor& like) {
  ActState st;
  auto opts = like.options();
  st.c = torch::zeros({B, T}, opts), st.R = torch::zeros({B, T}, opts), st.N = torch::zeros({B, T}, opts);
  st.halted = torch::zeros({B, T}, opts.dtype(torch::kBool));
  st.out = torch::zeros({B, T, C}, opts);
  return st;
}

torch::Tensor act_update(ActState& st, const torch::Tensor& p, const torch::Tensor& y, const ActOptions& o) {
  TORCH_CHECK(p.sizes() == st.c.sizes(), "act: halting probabilities must be [B, T] = ", st.c.sizes(), ", got ",
              p.sizes());
  TORCH_CHECK(y.sizes() == st.out.sizes(), "act: the step's output must be ", st.out.sizes(), ", got ", y.sizes());
  auto run = (~st.halted).to(p.scalar_type());
  auto over = (st.c + p * run > 1.0 - o.epsilon).to(p.scalar_type());
  auto halt = run * over, still = run * (1 - over);  // this step: halts now / runs on
  st.c = st.c + p * still;
  st.R = st.R + halt * (1 - st.c);  // the remainder: what is left of 1 at the halting step
  st.c = st.c + halt * st.R;
  st.N = st.N + still + halt;
  auto w = p * still + halt * st.R;
  auto wy = w.unsqueeze(-1);
  st.out = o.accumulated ? st.out + wy * y : wy * y + (1 - wy) * st.out;  // s (1 - w), not s * 1 - w (t2t #1004)
  st.halted = st.halted | (halt > 0);
  ++st.steps;
  return w;
}

bool act_continues(const ActState& st, const ActOptions& o) {
  return st.steps < o.max_steps && (o.run_to_cap || !st.halted.all().item<bool>());
}

ActState act_loop(const torch::Tensor& H0, const ActStep& step, const ActOptions& o) {
  TORCH_CHECK(H0.dim() == 3, "act: the state must be [B, T, C], got ", H0.sizes());
  if (o.max_steps < 1) throw Error("act: max_steps must be at least 1, got " + std::to_string(o.max_steps));
  if (!(o.epsilon > 0 && o.epsilon < 1)) throw Error("act: epsilon must lie in (0, 1), got " + std::to_string(o.epsilon));
  ActState st = act_start(H0.size(0), H0.size(1), H0.size(2), H0);
  auto H = H0;
  while (act_continues(st, o)) {
    const int64_t t = st.steps + 1;
    auto running = (~st.halted).unsqueeze(-1);  // before this step's update
    auto py = step(H, t);
    const auto& y = py.second;
    act_update(st, py.first, y, o);
    H = torch::where(running, y, H);  // halted positions carry their state unchanged
  }
  return st;
}

torch::Tensor act_ponder_cost(const ActState& st, double tau) { return tau * (st.N + st.R).mean(); }

}  // namespace longseq
