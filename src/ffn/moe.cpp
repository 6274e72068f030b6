// "moe": sparse experts in place of the dense feed-forward. Switch top-1 routing (Fedus, Zoph, Shazeer 2022,
// sec. 2.1-2.2, 2.4), top-k routing (Shazeer et al. 2017, sec. 2.1; GShard's top-2, Lepikhin et al. 2020, Alg. 1),
// the router z-loss (Zoph et al. 2022, ST-MoE, sec. 3). Tokens are cut into groups of S positions of one sequence;
// each expert takes at most Cap = max(min_capacity, floor(cf S / E)) tokens a group, first choices before second
// ones, in position order; a token past the capacity gets 0 from that expert (a dropped token: only the residual).
// Experts are W2_e act(W1_e x) without biases (Switch v1). Dispatch gathers each expert's tokens and adds its outputs
// back (O(T k C) memory); `dispatch = einsum` is the one-hot [G, S, E, Cap] form of the papers' code, kept as the
// tests' oracle. Losses: Switch's balancing loss alpha E sum_e f_e P_e per group (f from the argmax before capacity,
// P the mean router probability, pads excluded) and the z-loss mean(logsumexp(h)^2).
// Causality: with a finite capacity, whether a token is dropped depends on the later tokens of its group, so a
// causal LM trained with capacity_factor > 0 sees a little of its future (the sheet's pitfall 9); capacity_factor = 0
// places every token (no drops), which is causal and streams. A lone token in evaluation (decoding) always gets a
// place, whatever min_capacity.
// Not supported: Shazeer's importance and load losses, GShard's random second-expert policy, expert-choice routing.
#include <cmath>

#include "longseq/common.h"
#include "longseq/ffn.h"

namespace longseq {

namespace {

class MoeImpl : public FeedForwardKindImpl {
 public:
  explicit MoeImpl(const FfnArgs& a)
      : C_(a.d_model),
        F_(a.options["expert_dim"].get<int64_t>() > 0 ? a.options["expert_dim"].get<int64_t>() : a.d_ff),
        E_(a.options["experts"]),
        k_(a.options["top_k"]),
        group_(a.options["group_size"]),
        min_capacity_(a.options["min_capacity"]),
        cf_(a.options["capacity_factor"]),
        cf_eval_(a.options["eval_capacity_factor"]),
        aux_weight_(a.options["aux_weight"]),
        z_weight_(a.options["z_loss_weight"]),
        jitter_(a.options["jitter"]),
        expert_dropout_(a.options["expert_dropout"]),
        gate_(a.options["gate"]),
        noise_(a.options["noise"]),
        dispatch_(a.options["dispatch"]),
        relu_(a.options["activation"] == "relu") {
    if (k_ > E_) throw Error("feed-forward moe: top_k = " + std::to_string(k_) + " exceeds experts = " + std::to_string(E_));
    // Switch sec. 2.4: truncated normal with sigma = sqrt(s / fan_in), s = init_scale (0.1, ten times below the default).
    const double s = a.options["init_scale"];
    auto init = [&](std::vector<int64_t> shape, int64_t fan_in) {  // truncated at 2 sigma by the inverse CDF
      const double lo = 0.5 * std::erfc(2.0 / std::sqrt(2.0)), hi = 1.0 - lo;  // Phi(-2), Phi(2)
      auto u = torch::empty(shape).uniform_(lo, hi);
      return torch::erfinv(2.0 * u - 1.0) * std::sqrt(2.0) * std::sqrt(s / static_cast<double>(fan_in));
    };
    router_ = register_parameter("router", init({C_, E_}, C_));
    if (noise_ == "noisy_topk") router_noise_ = register_parameter("router_noise", torch::zeros({C_, E_}));  // Shazeer: zero init
    w1_ = register_parameter("w1", init({E_, C_, F_}, C_));
    w2_ = register_parameter("w2", init({E_, F_, C_}, F_));
  }

  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& padding_mask) override {
    TORCH_CHECK(x.dim() == 3 && x.size(2) == C_, "moe: x must be [B, T, ", C_, "], got ", x.sizes());
    const int64_t B = x.size(0), T = x.size(1), S = group_ > 0 ? std::min(group_, T) : T;
    const int64_t Tp = (T + S - 1) / S * S, G = B * Tp / S;
    auto valid = padding_mask.defined() ? ~padding_mask.to(torch::kBool) : torch::ones({B, T}, x.options().dtype(torch::kBool));
    auto xg = torch::constant_pad_nd(x, {0, 0, 0, Tp - T}).reshape({G, S, C_});
    auto vg = torch::constant_pad_nd(valid, {0, Tp - T}, 0).reshape({G, S});
    auto vf = vg.to(xg.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat);
    // Router in float32 (Switch sec. 2.4); jitter multiplies its input, noise adds to its logits, training only.
    const auto rt = xg.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;  // at least float32
    auto xr = xg.to(rt);
    if (is_training() && noise_ == "jitter" && jitter_ > 0) xr = xr * torch::empty_like(xr).uniform_(1.0 - jitter_, 1.0 + jitter_);
    auto h = torch::matmul(xr, router_.to(rt));  // [G, S, E]
    const auto clean = h;  // the z-loss reads the logits without Shazeer's noise
    if (is_training() && noise_ == "noisy_topk")  // Shazeer eq. 4: + N(0, 1) softplus(x W_noise), std floor 0.01 (t2t)
      h = h + torch::randn_like(h) * (torch::softplus(torch::matmul(xr, router_noise_.to(rt))) + 0.01);
    auto p = torch::softmax(h, -1);
    auto top = torch::topk(p, k_, -1);
    auto idx = std::get<1>(top);  // [G, S, k]
    torch::Tensor gates = std::get<0>(top);
    if (gate_ == "renormalized") gates = gates / gates.sum(-1, true);            // GShard's top-2
    else if (gate_ == "softmax_topk") gates = torch::softmax(h.gather(-1, idx), -1);  // Shazeer: softmax over the kept k
    // Capacity: first choices of the group before its second ones, each in position order; pads take none.
    const double cf = is_training() ? cf_ : cf_eval_;
    int64_t cap = cf > 0 ? std::max<int64_t>(min_capacity_, static_cast<int64_t>(std::floor(cf * S / E_))) : S;
    if (!is_training() && S == 1) cap = std::max<int64_t>(cap, 1);  // decoding one token: never dropped (the sheet)
    auto taken = torch::zeros({G, 1, E_}, idx.options());
    std::vector<torch::Tensor> keep(k_), slot(k_);
    for (int64_t j = 0; j < k_; ++j) {
      auto onehot = torch::one_hot(idx.select(-1, j), E_) * vg.unsqueeze(-1).to(torch::kLong);  // [G, S, E]
      auto pos = torch::cumsum(onehot, 1) - 1 + taken;
      slot[j] = (pos * onehot).sum(-1);  // [G, S]: the token's place in its expert's queue
      keep[j] = vg & (slot[j] < cap);
      taken = taken + onehot.sum(1, true);
    }
    // Losses (Switch eq. 4-6, ST-MoE eq. 5) over the group's real tokens.
    const auto n = vf.sum(1).clamp_min(1.0);                                                           // [G]
    auto f = (torch::one_hot(p.argmax(-1), E_).to(p.scalar_type()) * vf.unsqueeze(-1)).sum(1) / n.unsqueeze(-1);
    auto P = (p * vf.unsqueeze(-1)).sum(1) / n.unsqueeze(-1);
    auto has = (vf.sum(1) > 0).to(p.scalar_type());
    auto aux = ((f * P).sum(-1) * static_cast<double>(E_) * has).sum() / has.sum().clamp_min(1.0);
    auto z = (torch::logsumexp(clean, -1).square() * vf).sum() / vf.sum().clamp_min(1.0);
    std::map<std::string, torch::Tensor> losses;
    if (aux_weight_ > 0) losses["moe_balance"] = aux_weight_ * aux;
    if (z_weight_ > 0) losses["moe_z"] = z_weight_ * z;
    // Metrics: the share of (token, choice) assignments dropped, and the busiest expert's load times E (1 = even).
    auto kept = torch::zeros({E_}, idx.options().dtype(torch::kFloat));  // on idx's device: index_add_ needs one
    double placed = 0;
    for (int64_t j = 0; j < k_; ++j) {
      kept.index_add_(0, idx.select(-1, j).masked_select(keep[j]), torch::ones({keep[j].sum().item<int64_t>()}, kept.options()));
      placed += keep[j].sum().item<double>();
    }
    const double real = vf.sum().item<double>() * static_cast<double>(k_);
    record_aux(losses, {{"moe_dropped", real > 0 ? 1.0 - placed / real : 0.0},
                        {"moe_load_max", placed > 0 ? kept.max().item<double>() / placed * static_cast<double>(E_) : 0.0},
                        {"moe_balance_loss", aux.item<double>()}});
    auto out = dispatch_ == "einsum" ? combine_einsum(xg, idx, gates.to(x.dtype()), keep, slot, cap)
                                     : combine_gather(xg, idx, gates.to(x.dtype()), keep);
    return out.reshape({B, Tp, C_}).narrow(1, 0, T);
  }

 private:
  int64_t C_, F_, E_, k_, group_, min_capacity_;
  double cf_, cf_eval_, aux_weight_, z_weight_, jitter_, expert_dropout_;
  std::string gate_, noise_, dispatch_;
  bool relu_;
  torch::Tensor router_, router_noise_, w1_, w2_;

  // Expert e on rows [.., C] -> [.., C].
  torch::Tensor expert(const torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& w2) {
    auto a = torch::matmul(x, w1);
    a = relu_ ? torch::relu(a) : torch::gelu(a);
    if (expert_dropout_ > 0) a = torch::dropout(a, expert_dropout_, is_training());
    return torch::matmul(a, w2);
  }

  // Each expert's kept tokens gathered, run, scaled by their gate and added back in place.
  torch::Tensor combine_gather(const torch::Tensor& xg, const torch::Tensor& idx, const torch::Tensor& gates,
                               const std::vector<torch::Tensor>& keep) {
    auto flat = xg.reshape({-1, C_});
    auto out = torch::zeros_like(flat);  // a dropped token gets exactly 0 (the sheet's pitfall 1)
    auto ids = idx.reshape({-1, k_}), g = gates.reshape({-1, k_});
    for (int64_t e = 0; e < E_; ++e) {
      std::vector<torch::Tensor> rows, weights;
      for (int64_t j = 0; j < k_; ++j) {
        auto sel = ((ids.select(1, j) == e) & keep[j].reshape({-1})).nonzero().squeeze(1);
        rows.push_back(sel);
        weights.push_back(g.select(1, j).index_select(0, sel));
      }
      auto r = torch::cat(rows), w = torch::cat(weights);
      if (r.numel() == 0) continue;
      out = out.index_add(0, r, expert(flat.index_select(0, r), w1_[e], w2_[e]) * w.unsqueeze(1));
    }
    return out;
  }

  // The papers' one-hot form: dispatch [G, S, E, Cap] and combine weights, experts on [E, G, Cap, C].
  torch::Tensor combine_einsum(const torch::Tensor& xg, const torch::Tensor& idx, const torch::Tensor& gates,
                               const std::vector<torch::Tensor>& keep, const std::vector<torch::Tensor>& slot,
                               int64_t cap) {
    if (cap == 0) return torch::zeros_like(xg);  // every token dropped
    auto dispatch = torch::zeros({xg.size(0), xg.size(1), E_, cap}, xg.options());
    auto combine = torch::zeros_like(dispatch);
    for (int64_t j = 0; j < k_; ++j) {
      auto m = (torch::one_hot(idx.select(-1, j), E_).unsqueeze(-1) *
                torch::one_hot(slot[j].clamp(0, cap - 1), cap).unsqueeze(-2)).to(xg.dtype()) *
               keep[j].to(xg.dtype()).unsqueeze(-1).unsqueeze(-1);
      dispatch = dispatch + m;
      combine = combine + m * gates.select(-1, j).unsqueeze(-1).unsqueeze(-1);
    }
    auto ein = torch::einsum("gsec,gsm->egcm", {dispatch, xg});  // [E, G, Cap, C]
    auto eout = expert(ein.reshape({E_, -1, C_}), w1_, w2_).reshape(ein.sizes());
    return torch::einsum("gsec,egcm->gsm", {combine, eout});
  }
};

}  // namespace

FfnInfo moe_ffn_info() {
  FfnInfo f;
  f.name = "moe";
  f.summary = "sparse experts: Switch top-1 or top-k routing, expert capacity with dropped tokens, the balancing "
              "loss and the router z-loss, dispatch by gather/scatter";
  f.citation = "Fedus, Zoph, Shazeer 2022, Switch Transformers; Shazeer et al. 2017, Outrageously Large Neural "
               "Networks; Lepikhin et al. 2020, GShard; Zoph et al. 2022, ST-MoE";
  f.schema = {
      {"experts", OptionType::Int, 8, "E, the experts", 1, 4096},
      {"top_k", OptionType::Int, 1, "experts per token: 1 = Switch, 2 = GShard / ST-MoE", 1, 4096},
      {"expert_dim", OptionType::Int, 0, "F, each expert's hidden width; 0 = model.d_ff (equal active parameters "
       "with k = 1)", 0, 1 << 20},
      {"gate", OptionType::String, "raw", "how chosen experts are weighted: raw router probability (Switch, "
       "ST-MoE), renormalized over the k chosen (GShard), softmax_topk over the k chosen logits (Shazeer)", -1e300,
       1e300, {"raw", "renormalized", "softmax_topk"}},
      {"capacity_factor", OptionType::Float, 1.25, "training capacity Cap = max(min_capacity, floor(cf S / E)) "
       "tokens per expert and group (Switch eq. 3); 0 = no limit, nothing dropped (causal, streams)", 0.0, 1e6},
      {"eval_capacity_factor", OptionType::Float, 2.0, "the same in evaluation and generation (ST-MoE: 2.0); 0 = no "
       "limit", 0.0, 1e6},
      {"min_capacity", OptionType::Int, 4, "floor on Cap (Mesh TensorFlow, flaxformer)", 0, 1 << 30},
      {"group_size", OptionType::Int, 1024, "S, positions of one sequence per routing group (capacity and balancing "
       "are per group; Mesh: 1024); 0 = the whole sequence", 0, 1 << 30},
      {"aux_weight", OptionType::Float, 1e-2, "alpha of the balancing loss alpha E sum f P (Switch sec. 2.2)", 0.0, 100.0},
      {"z_loss_weight", OptionType::Float, 1e-3, "c_z of the router z-loss (ST-MoE sec. 3); 0 = off", 0.0, 100.0},
      {"noise", OptionType::String, "jitter", "router noise in training: jitter (input times U[1 - eps, 1 + eps], "
       "Switch), noisy_topk (learned Gaussian noise on the logits, Shazeer eq. 4) or none", -1e300, 1e300,
       {"jitter", "noisy_topk", "none"}},
      {"jitter", OptionType::Float, 1e-2, "eps of the jitter", 0.0, 1.0},
      {"activation", OptionType::String, "relu", "experts' activation (Switch v1: relu)", -1e300, 1e300, {"relu", "gelu"}},
      {"init_scale", OptionType::Float, 0.1, "s of the truncated-normal init sqrt(s / fan_in) (Switch sec. 2.4)", 1e-6,
       100.0},
      {"expert_dropout", OptionType::Float, 0.0, "dropout inside the experts (Switch fine-tuning: 0.4)", 0.0, 0.99},
      {"dispatch", OptionType::String, "gather", "gather (each expert's tokens gathered and added back) or einsum "
       "(one-hot [G, S, E, Cap] products, the papers' code; memory O(T cf S))", -1e300, 1e300, {"gather", "einsum"}},
  };
  f.not_reversible = "its auxiliary losses would be recorded again by the reversible stack's recomputation";
  f.not_sliceable = "its routing groups, capacity and dropped tokens would follow the slices";
  f.make = [](const FfnArgs& a) -> FeedForwardKind { return std::make_shared<MoeImpl>(a); };
  return f;
}

}  // namespace longseq
