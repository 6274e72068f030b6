// "sparse_ff": the Scaling Transformer's sparse feed-forward (Jaszczur et al. 2021, "Sparse is Enough in Scaling
// Transformers", sec. 3.1; trax SparseFF). The F hidden units form F/N blocks of N; a low-rank controller
// l = x C1 C2 + c_b (C1 [C, R], C2 [R, F], no nonlinearity between) picks one unit per block, and
//   Y = (ReLU(x W1) * m) W2 + b2,  m = one-hot(argmax_j l_{i, j}) per block i,
// unit (i, j) being column i N + j of W1, C2, c_b and row i N + j of W2 (the sheet's pitfall 4). No b1 (trax).
// Training (trax's form, pitfall 1): q = argmax(log softmax(l) + tau g), g ~ Gumbel(0, 1) (tau scales the noise),
// the straight-through mask one-hot(q) + p - sg(p) with p = softmax(l); one draw per call picks that hard mask with
// probability quant_prob, else the soft mask p itself (pitfall 2). The draws come from the default generator, so
// the reversible stack's replay of it recomputes the same masks (pitfall 5).
// Inference: argmax without noise; the masked dense product, or (`inference = gathered`, and `auto` for at most
// 64 tokens, i.e. decoding) only the chosen columns: 2 C F / N multiply-adds a token instead of 2 C F, plus the
// controller's C R + R F.
#include <cmath>

#include "longseq/common.h"
#include "longseq/ffn.h"

namespace longseq {

namespace {

class SparseFFImpl : public FeedForwardKindImpl {
 public:
  explicit SparseFFImpl(const FfnArgs& a)
      : C_(a.d_model),
        F_(a.d_ff),
        N_(a.options["block"]),
        R_(a.options["rank"].get<int64_t>() > 0 ? a.options["rank"].get<int64_t>() : a.d_ff / a.options["block"].get<int64_t>()),
        tau_(a.options["temperature"]),
        quant_prob_(a.options["quant_prob"]),
        dropout_(a.dropout),
        inference_(a.options["inference"]) {
    if (F_ % N_ != 0)
      throw Error("feed-forward sparse_ff: block = " + std::to_string(N_) + " must divide model.d_ff = " +
                  std::to_string(F_) + " (the hidden units form d_ff / block blocks)");
    auto lin_init = [](std::vector<int64_t> shape, int64_t fan_in) {
      const double limit = 1.0 / std::sqrt(static_cast<double>(fan_in));  // LibTorch's Linear default range
      return torch::empty(shape).uniform_(-limit, limit);
    };
    c1_ = register_parameter("controller1", lin_init({C_, R_}, C_));
    c2_ = register_parameter("controller2", lin_init({R_, F_}, R_));
    cb_ = register_parameter("controller_bias", torch::zeros({F_}));
    w1_ = register_parameter("w1", lin_init({C_, F_}, C_));
    w2_ = register_parameter("w2", lin_init({F_, C_}, F_));
    b2_ = register_parameter("b2", torch::zeros({C_}));
  }

  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor&) override {
    TORCH_CHECK(x.size(-1) == C_, "sparse_ff: x must be [.., ", C_, "], got ", x.sizes());
    const int64_t blocks = F_ / N_;
    auto logits = (torch::matmul(torch::matmul(x, c1_), c2_) + cb_).unflatten(-1, {blocks, N_});  // [.., F/N, N]
    torch::Tensor mask;
    if (is_training()) {
      auto p = torch::softmax(logits, -1);
      auto u = torch::rand({1}).item<double>();  // hard or soft for the whole call (pitfall 2)
      auto g = -torch::log(-torch::log(torch::rand_like(logits).clamp_min(1e-20)));  // Gumbel(0, 1)
      auto q = (torch::log_softmax(logits, -1) + tau_ * g).argmax(-1);
      if (u < quant_prob_) mask = torch::one_hot(q, N_).to(p.dtype()) + p - p.detach();  // straight-through
      else mask = p;
    } else {
      auto q = logits.argmax(-1);  // [.., F/N]
      const bool gathered = inference_ == "gathered" || (inference_ == "auto" && x.numel() / C_ <= 64);
      if (gathered) return chosen_columns(x, q);
      mask = torch::one_hot(q, N_).to(x.dtype());
    }
    auto h = torch::relu(torch::matmul(x, w1_)) * mask.flatten(-2);
    if (dropout_ > 0) h = torch::dropout(h, dropout_, is_training());
    return torch::matmul(h, w2_) + b2_;
  }

 private:
  int64_t C_, F_, N_, R_;
  double tau_, quant_prob_, dropout_;
  std::string inference_;
  torch::Tensor c1_, c2_, cb_, w1_, w2_, b2_;

  // The decoding path: only the chosen unit of each block, q [.., F/N] -> [.., C].
  torch::Tensor chosen_columns(const torch::Tensor& x, const torch::Tensor& q) const {
    const int64_t blocks = F_ / N_;
    auto units = q + torch::arange(blocks, q.options()) * N_;           // [.., F/N]: column i N + q_i
    auto flat_units = units.reshape({-1, blocks});                     // [n, F/N]
    auto xs = x.reshape({-1, C_});                                      // [n, C]
    auto w1t = w1_.t().index_select(0, flat_units.reshape({-1})).view({-1, blocks, C_});  // [n, F/N, C]
    auto h = torch::relu(torch::bmm(w1t, xs.unsqueeze(-1)).squeeze(-1));                 // [n, F/N]
    auto w2s = w2_.index_select(0, flat_units.reshape({-1})).view({-1, blocks, C_});     // [n, F/N, C]
    auto y = torch::bmm(h.unsqueeze(1), w2s).squeeze(1) + b2_;
    return y.view(x.sizes());
  }
};

}  // namespace

FfnInfo sparse_ff_ffn_info() {
  FfnInfo f;
  f.name = "sparse_ff";
  f.summary = "Scaling Transformer sparse feed-forward: a low-rank controller keeps one unit in each block of N "
              "(Gumbel noise and a straight-through mask in training); decoding multiplies only the chosen columns";
  f.citation = "Jaszczur et al. 2021, Sparse is Enough in Scaling Transformers, sec. 3.1";
  f.schema = {
      {"block", OptionType::Int, 64, "N, hidden units per block, one of them active (the paper's medium model: 64); "
       "must divide model.d_ff", 1, 1 << 20},
      {"rank", OptionType::Int, 0, "R, the controller's rank; 0 = d_ff / N (trax's default)", 0, 1 << 20},
      {"temperature", OptionType::Float, 0.1, "tau, the scale of the Gumbel noise in training (trax: it multiplies "
       "the noise, it does not divide the logits)", 0.0, 100.0},
      {"quant_prob", OptionType::Float, 0.3, "probability that a training call uses the hard straight-through mask "
       "rather than the soft softmax mask (one draw per call)", 0.0, 1.0},
      {"inference", OptionType::String, "auto", "evaluation path: masked (the dense product times the one-hot mask), "
       "gathered (only the chosen columns), auto (gathered for at most 64 tokens: decoding)", -1e300, 1e300,
       {"auto", "masked", "gathered"}},
  };
  f.not_sliceable = "its hard-or-soft mask is drawn once per call, so slices would mix them";
  f.make = [](const FfnArgs& a) -> FeedForwardKind { return std::make_shared<SparseFFImpl>(a); };
  return f;
}

}  // namespace longseq
