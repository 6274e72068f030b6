// Perceiver AR (Hawthorne et al. 2022): see longseq/perceiver_ar.h.
#include "longseq/perceiver_ar.h"

#include <cmath>

#include "longseq/common.h"
#include "longseq/kernels/flash_attention.h"
#include "longseq/kernels/growing_cache.h"
#include "longseq/mixers/heads.h"
#include "longseq/registry.h"

namespace longseq {

namespace {

// Decoding state beside the latent layers' caches (App. E.3).
struct PerceiverCache : MixerState {
  torch::Tensor tokens;       // [B, L] every token fed, for the refill passes
  GrowingCache k, v;          // cross keys and values of every input [B, H, L, D]
  torch::Tensor key_padding;  // [B, L] or undefined
  int64_t latents = 0;        // latents the latent layers' caches hold
  std::map<std::string, torch::Tensor> tensors() const override {
    return {{"tokens", tokens}, {"cross_k", k.view()}, {"cross_v", v.view()}};
  }
  void reorder(const torch::Tensor& index) override {
    auto i = reorder_index(index, rows_of({tokens}), "perceiver_ar");
    tokens = select_rows(tokens, i), k.reorder(i), v.reorder(i), key_padding = select_rows(key_padding, i);
  }
};

torch::Tensor positions_from(int64_t first, int64_t n, const torch::Device& device) {
  return torch::arange(first, first + n, torch::TensorOptions().dtype(torch::kLong).device(device));
}

void check_padding(const torch::Tensor& mask, int64_t B, int64_t T) {
  if (mask.defined() && (mask.dim() != 2 || mask.size(0) != B || mask.size(1) != T))
    throw Error("perceiver_ar: the padding mask must be [B, T] like the tokens");
}

}  // namespace

PerceiverARImpl::PerceiverARImpl(const ModelConfig& cfg) : cfg_(cfg) {
  const int64_t C = cfg.d_model;
  rotary_.fraction = cfg.rotary_fraction;
  rotary_.max_wavelength = cfg.rotary_max_wavelength > 0 ? cfg.rotary_max_wavelength : static_cast<double>(cfg.max_len);
  embed_ = register_module("embed", torch::nn::Embedding(cfg.vocab_size, C));
  torch::nn::init::normal_(embed_->weight, 0.0, 1.0 / std::sqrt(static_cast<double>(C)));  // unit scale after sqrt(C)
  if (cfg.positions == "learned") {
    learned_pos_ = register_module("pos", torch::nn::Embedding(cfg.max_len, C));
    torch::nn::init::normal_(learned_pos_->weight, 0.0, 0.02);
  }
  latent_init_ = register_module("latent_init", torch::nn::Linear(C, C));  // sec. 3: z0 = Linear(E[T-N:])
  ln_q_ = register_module("ln_q", torch::nn::LayerNorm(torch::nn::LayerNormOptions({C})));
  ln_kv_ = register_module("ln_kv", torch::nn::LayerNorm(torch::nn::LayerNormOptions({C})));
  cross_q_ = register_module("cross_q", torch::nn::Linear(C, C));
  cross_kv_ = register_module("cross_kv", torch::nn::Linear(C, 2 * C));
  cross_out_ = register_module("cross_out", torch::nn::Linear(C, C));
  ln_cross_ff_ = register_module("ln_cross_ff", torch::nn::LayerNorm(torch::nn::LayerNormOptions({C})));
  cross_ff_ = register_module("cross_ff", FeedForward(C, cfg.d_ff, cfg.dropout, cfg.ff_activation));
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    const auto& info = find_mixer(cfg.layers[i].name);
    if (cfg.positions == "rotary" && !info.rotary)
      throw Error("model layer " + std::to_string(i) + ": mixer " + info.name + " does not take rotary positions, "
                  "which model.positions = rotary applies in every latent layer; use mixer full there, or "
                  "model.positions = sinusoidal, learned or none");
    blocks_.push_back(register_module("block" + std::to_string(i),
                                      Block(make_mixer(cfg.layers[i], C, cfg.n_heads, i), C, cfg.d_ff, cfg.dropout,
                                            cfg.ff_activation).ptr()));
  }
  ln_final_ = register_module("ln_final", torch::nn::LayerNorm(torch::nn::LayerNormOptions({C})));
  if (!cfg.tie_embeddings) {
    head_ = register_module("head", torch::nn::Linear(torch::nn::LinearOptions(C, cfg.vocab_size).bias(false)));
    torch::nn::init::zeros_(head_->weight);  // the paper's code: final layer initialised to zeros
  }
}

torch::Tensor PerceiverARImpl::embed(const torch::Tensor& tokens, int64_t first) {
  return add_absolute_positions(embed_(tokens) * std::sqrt(static_cast<double>(cfg_.d_model)), cfg_, learned_pos_,
                                first);
}

std::pair<torch::Tensor, torch::Tensor> PerceiverARImpl::cross_keys(const torch::Tensor& e,
                                                                    const torch::Tensor& positions) {
  auto kv = cross_kv_(ln_kv_(e)).chunk(2, -1);  // separate LayerNorm for the keys' input (sec. 3)
  auto k = split_heads(kv[0], cfg_.n_heads), v = split_heads(kv[1], cfg_.n_heads);
  if (cfg_.positions == "rotary") k = apply_rotary(k, positions, rotary_);
  return {k.contiguous(), v.contiguous()};
}

torch::Tensor PerceiverARImpl::logits_of(const torch::Tensor& z) {
  auto h = ln_final_(z);
  auto logits = head_ ? head_(h) : torch::matmul(h, embed_->weight.t());
  if (cfg_.z_loss > 0 && is_training()) aux_loss_ = cfg_.z_loss * torch::logsumexp(logits, -1).square().mean();
  return logits;
}

torch::Tensor PerceiverARImpl::latent_pass(const torch::Tensor& e, int64_t first, const torch::Tensor& k,
                                           const torch::Tensor& v, const torch::Tensor& key_padding,
                                           const torch::Tensor& latent_padding,
                                           std::vector<std::unique_ptr<MixerState>>* layers) {
  const int64_t n = e.size(1);
  auto z = latent_init_(e);
  auto q = split_heads(cross_q_(ln_q_(z)), cfg_.n_heads);
  if (cfg_.positions == "rotary") q = apply_rotary(q, positions_from(first, n, e.device()), rotary_);
  // Causal rectangle: latent i (the (S - n + i)-th key) sees keys s <= S - n + i (AttentionMask::causal).
  auto a = exact_attention(q, k, v, AttentionMask{true, key_padding});
  auto attended = cross_out_(merge_heads(a));
  if (cfg_.dropout > 0) attended = torch::dropout(attended, cfg_.dropout, is_training());
  z = z + attended;  // the query residual
  auto f = cross_ff_(ln_cross_ff_(z));
  if (cfg_.dropout > 0) f = torch::dropout(f, cfg_.dropout, is_training());
  z = z + f;
  MixContext ctx;
  ctx.causal = true;
  ctx.offset = first;
  ctx.padding_mask = latent_padding;
  if (cfg_.positions == "rotary") ctx.rotary = &rotary_;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    ctx.state = layers ? (*layers)[i].get() : nullptr;
    z = blocks_[i]->forward(z, ctx);
  }
  return logits_of(z);
}

torch::Tensor PerceiverARImpl::forward_latents(const torch::Tensor& tokens, int64_t n,
                                               const torch::Tensor& padding_mask) {
  TORCH_CHECK(tokens.dim() == 2, "perceiver_ar: tokens must be [B, T], got ", tokens.sizes());
  const int64_t B = tokens.size(0), T = tokens.size(1);
  if (n < 1 || n > T)
    throw Error("perceiver_ar: " + std::to_string(n) + " latents for " + std::to_string(T) + " tokens (1 to T)");
  check_padding(padding_mask, B, T);
  aux_loss_ = torch::Tensor();
  auto e = embed(tokens, 0);
  if (cfg_.dropout > 0) e = torch::dropout(e, cfg_.dropout, is_training());
  auto pad = padding_mask.defined() ? padding_mask.to(torch::kBool) : torch::Tensor();
  auto e_keys = e;
  torch::Tensor key_pos = positions_from(0, T, tokens.device()), key_pad = pad;
  const int64_t prefix = T - n, dropped = static_cast<int64_t>(std::floor(cfg_.context_dropout * prefix));
  if (is_training() && dropped > 0) {
    // Cross-attend dropout (sec. 3): per example, `dropped` random context positions before the latents are
    // removed; the latents' own positions stay, so every latent keeps its own key.
    auto order = torch::rand({B, prefix}, e.options()).argsort(1, false).narrow(1, 0, prefix - dropped);
    torch::Tensor kept = std::get<0>(order.sort(1));
    key_pos = torch::cat({kept, positions_from(prefix, n, tokens.device()).expand({B, n})}, 1);  // [B, S]
    e_keys = e.gather(1, key_pos.unsqueeze(-1).expand({B, key_pos.size(1), e.size(2)}));
    if (pad.defined()) key_pad = pad.gather(1, key_pos);
  }
  auto [k, v] = cross_keys(e_keys, key_pos);
  return latent_pass(e.narrow(1, prefix, n), prefix, k, v, key_pad,
                     pad.defined() ? pad.narrow(1, prefix, n) : torch::Tensor(), nullptr);
}

torch::Tensor PerceiverARImpl::forward(const torch::Tensor& tokens, ModelState* state,
                                       const torch::Tensor& padding_mask) {
  TORCH_CHECK(tokens.dim() == 2, "perceiver_ar: tokens must be [B, T], got ", tokens.sizes());
  if (!state) return forward_latents(tokens, std::min(cfg_.latents, tokens.size(1)), padding_mask);
  auto* cache = dynamic_cast<PerceiverCache*>(state->own.get());
  TORCH_CHECK(cache && state->layers.size() == blocks_.size(), "perceiver_ar: the state was not made by this model");
  const int64_t B = tokens.size(0), c = tokens.size(1), L0 = state->offset, L = L0 + c;
  TORCH_CHECK(c >= 1, "perceiver_ar: a decoding step needs at least one token");
  check_padding(padding_mask, B, c);
  aux_loss_ = torch::Tensor();
  auto e = embed(tokens, L0);
  auto [k_new, v_new] = cross_keys(e, positions_from(L0, c, tokens.device()));
  const int64_t held = cache->tokens.defined() ? cache->tokens.size(1) : 0;  // inputs in the context window
  auto k = cache->k.append(k_new), v = cache->v.append(v_new);
  cache->key_padding = append_padding(cache->key_padding, held, padding_mask, B, c);
  cache->tokens = cache->tokens.defined() ? torch::cat({cache->tokens, tokens}, 1) : tokens;
  state->offset = L;
  // Window rows are relative to its first input, at absolute position L - (its length).
  auto latent_pad = [&](int64_t first, int64_t n) {
    const int64_t base = L - cache->tokens.size(1);
    return cache->key_padding.defined() ? cache->key_padding.narrow(1, first - base, n) : torch::Tensor();
  };
  if (cache->latents > 0 && cache->latents + c <= cfg_.latents) {  // room in the latent caches: c more latents
    cache->latents += c;
    return latent_pass(e, L0, k, v, cache->key_padding, latent_pad(L0, c), &state->layers);
  }
  // Empty or full latent caches: a refill pass with F latents (App. E.3) over the context window, the last
  // max_len inputs (training's longest context; between refills it grows by at most latents - F).
  const int64_t window = cfg_.max_len, kept = cache->tokens.size(1);
  if (kept > window) {
    cache->k.keep_last(window), cache->v.keep_last(window);
    k = cache->k.view(), v = cache->v.view();
    cache->tokens = cache->tokens.narrow(1, kept - window, window).contiguous();
    if (cache->key_padding.defined())
      cache->key_padding = cache->key_padding.narrow(1, kept - window, window).contiguous();
  }
  const int64_t span = cache->tokens.size(1);
  const int64_t F = std::min(span, std::max(reset_latents(), std::min(c, cfg_.latents)));
  state->layers = block_states(blocks_, layer_names(cfg_), B);
  auto logits = latent_pass(F <= c ? e.narrow(1, c - F, F) : embed(cache->tokens.narrow(1, span - F, F), L - F),
                            L - F, k, v, cache->key_padding, latent_pad(L - F, F), &state->layers);
  cache->latents = F;
  return logits.narrow(1, F - std::min(c, F), std::min(c, F));
}

ModelState PerceiverARImpl::initial_state(int64_t batch) const {
  ModelState s;
  s.layers = block_states(blocks_, layer_names(cfg_), batch);
  s.own = std::make_unique<PerceiverCache>();
  return s;
}

}  // namespace longseq
