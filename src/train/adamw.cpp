#include <cmath>

#include "longseq/common.h"
#include "longseq/train.h"

namespace longseq {

std::set<std::string> decayed_parameters(const torch::nn::Module& root) {
  std::set<std::string> out;
  for (const auto& item : root.named_modules("", true)) {
    const torch::nn::Module& m = *item.value();
    const auto* choice = dynamic_cast<const WeightDecayChoice*>(&m);
    const bool matrix_owner = dynamic_cast<const torch::nn::LinearImpl*>(&m) ||
                              dynamic_cast<const torch::nn::EmbeddingImpl*>(&m);
    for (const auto& p : m.named_parameters(false)) {
      const bool decays = choice ? choice->decays(p.key()) : matrix_owner && p.key() == "weight";
      if (decays) out.insert(item.key().empty() ? p.key() : item.key() + "." + p.key());
    }
  }
  return out;
}

AdamW::AdamW(std::vector<std::pair<std::string, torch::Tensor>> params, double beta1, double beta2, double eps,
             double weight_decay, const std::set<std::string>& decayed)
    : params_(std::move(params)), beta1_(beta1), beta2_(beta2), eps_(eps), weight_decay_(weight_decay) {
  std::set<std::string> names;
  for (const auto& p : params_) {
    m_.push_back(torch::zeros_like(p.second));
    v_.push_back(torch::zeros_like(p.second));
    decay_.push_back(decayed.count(p.first) > 0);
    names.insert(p.first);
  }
  for (const auto& d : decayed)
    if (!names.count(d)) throw Error("AdamW: parameter " + d + " chosen for weight decay is not among the parameters");
}

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  ++steps_;
  const double bc1 = 1.0 - std::pow(beta1_, static_cast<double>(steps_));
  const double bc2 = 1.0 - std::pow(beta2_, static_cast<double>(steps_));
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i].second;
    if (!p.grad().defined()) continue;
    const auto& g = p.grad();
    if (decay_[i] && weight_decay_ > 0) p.mul_(1.0 - lr * weight_decay_);
    m_[i].mul_(beta1_).add_(g, 1.0 - beta1_);
    v_[i].mul_(beta2_).addcmul_(g, g, 1.0 - beta2_);
    auto denom = (v_[i] / bc2).sqrt_().add_(eps_);
    p.addcdiv_(m_[i], denom, -lr / bc1);
  }
}

void AdamW::zero_grad() {
  for (auto& p : params_)
    if (p.second.grad().defined()) p.second.mutable_grad().zero_();
}

TensorFile AdamW::state(const std::string& prefix) const {
  TensorFile f;
  for (size_t i = 0; i < params_.size(); ++i) {
    f.tensors.push_back({prefix + "m." + params_[i].first, m_[i]});
    f.tensors.push_back({prefix + "v." + params_[i].first, v_[i]});
  }
  return f;
}

void AdamW::load_state(const TensorFile& file, const std::string& prefix, int64_t steps, const std::string& source) {
  std::vector<const torch::Tensor*> found;
  for (size_t i = 0; i < params_.size(); ++i) {
    for (const char* which : {"m.", "v."}) {
      const std::string name = prefix + which + params_[i].first;
      const auto* t = file.find(name);
      if (!t) throw Error(source + " does not match the model: it lacks optimizer tensor " + name);
      check_tensor_matches(*t, params_[i].second, source, "optimizer tensor " + name);
      found.push_back(t);
    }
  }
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    m_[i].copy_(*found[2 * i]);
    v_[i].copy_(*found[2 * i + 1]);
  }
  steps_ = steps;
}

double learning_rate(int64_t step, int64_t total, int64_t warmup, double lr, double min_ratio) {
  if (warmup > 0 && step <= warmup) return lr * static_cast<double>(step) / static_cast<double>(warmup);
  const double span = std::max<int64_t>(1, total - warmup);
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / span);
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
  return lr * (min_ratio + (1.0 - min_ratio) * cosine);
}

}  // namespace longseq
