#include "longseq/layers.h"

#include <cmath>

#include "longseq/act.h"
#include "longseq/blocks.h"
#include "longseq/common.h"

namespace longseq {

FeedForwardImpl::FeedForwardImpl(int64_t d_model, int64_t d_ff, double dropout, const std::string& activation)
    : dropout_(dropout), squared_relu_(activation == "squared_relu"), relu_(activation == "relu") {
  if (activation != "gelu" && activation != "squared_relu" && activation != "relu")
    throw Error("feed-forward activation \"" + activation + "\" is not one of gelu, relu, squared_relu");
  w_in_ = register_module("w_in", torch::nn::Linear(d_model, d_ff));
  w_out_ = register_module("w_out", torch::nn::Linear(d_ff, d_model));
}

torch::Tensor FeedForwardImpl::forward(const torch::Tensor& x, const torch::Tensor&) {
  auto h = squared_relu_ ? torch::relu(w_in_(x)).square() : relu_ ? torch::relu(w_in_(x)) : torch::gelu(w_in_(x));
  if (dropout_ > 0) h = torch::dropout(h, dropout_, is_training());
  return w_out_(h);
}

BlockImpl::BlockImpl(Mixer mixer, int64_t d_model, int64_t d_ff, double dropout, const std::string& activation,
                     FeedForwardKind ff)
    : mixer_(std::move(mixer)), dropout_(dropout) {
  ln_mix_ = register_module("ln_mix", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d_model})));
  register_module("mixer", mixer_);
  ln_ff_ = register_module("ln_ff", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d_model})));
  if (!ff) ff = std::make_shared<FeedForwardImpl>(d_model, d_ff, dropout, activation);
  ff_ = register_module("ff", std::move(ff));
}

torch::Tensor BlockImpl::mix_branch(const torch::Tensor& x, MixContext& ctx) {
  auto h = mixer_->forward(ln_mix_(x), ctx);
  return dropout_ > 0 ? torch::dropout(h, dropout_, is_training()) : h;
}

torch::Tensor over_length_slices(const torch::Tensor& x, int64_t chunks, const torch::Tensor& padding,
                                 const std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)>& fn) {
  const int64_t T = x.size(1);
  TORCH_CHECK(!padding.defined() || (padding.dim() == 2 && padding.size(1) == T), "block: the padding mask is ",
              padding.sizes(), " for an input of ", T, " positions");
  if (chunks <= 1 || T <= 1) return fn(x, padding);
  std::vector<torch::Tensor> parts;
  const int64_t step = (T + chunks - 1) / chunks;
  for (int64_t t = 0; t < T; t += step) {
    const int64_t n = std::min(step, T - t);
    parts.push_back(fn(x.narrow(1, t, n), padding.defined() ? padding.narrow(1, t, n) : torch::Tensor()));
  }
  return torch::cat(parts, 1);
}

torch::Tensor BlockImpl::ff_branch(const torch::Tensor& x, int64_t chunks, const torch::Tensor& padding) {
  return over_length_slices(x, chunks, padding, [&](const torch::Tensor& part, const torch::Tensor& pad) {
    auto f = ff_->forward(ln_ff_(part), pad);
    return dropout_ > 0 ? torch::dropout(f, dropout_, is_training()) : f;
  });
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x, MixContext& ctx, int64_t ff_chunks) {
  auto y = x + mix_branch(x, ctx);
  return y + ff_branch(y, ff_chunks, ctx.padding_mask);
}

torch::Tensor sinusoidal_positions(const torch::Tensor& positions, int64_t C) {
  auto opts = torch::TensorOptions().dtype(torch::kFloat).device(positions.device());
  auto pos = positions.to(torch::kFloat).unsqueeze(1);                      // [T, 1]
  auto i = torch::arange(0, (C + 1) / 2, opts);                             // [C/2]
  auto freq = torch::exp(i * (-2.0 * std::log(10000.0) / static_cast<double>(C)));
  auto angle = pos * freq.unsqueeze(0);                                     // [T, C/2]
  auto table = torch::stack({torch::sin(angle), torch::cos(angle)}, 2).flatten(1);  // interleaved
  return table.slice(1, 0, C);
}

TrunkImpl::TrunkImpl(const ModelConfig& cfg) : cfg_(cfg) {
  embed_ = register_module("embed", torch::nn::Embedding(cfg.vocab_size, cfg.d_model));
  // Unit-scale token vectors after the sqrt(C) factor of forward(), so the
  // sinusoidal positions (also unit scale) do not drown the token identity;
  // the tied output then yields logits of unit scale.
  torch::nn::init::normal_(embed_->weight, 0.0, 1.0 / std::sqrt(static_cast<double>(cfg.d_model)));
  if (cfg.positions == "learned") {
    learned_pos_ = register_module("pos", torch::nn::Embedding(cfg.max_len, cfg.d_model));
    torch::nn::init::normal_(learned_pos_->weight, 0.0, 0.02);
  }
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    BlockArgs args;
    args.d_model = cfg.d_model, args.n_heads = cfg.n_heads, args.d_ff = cfg.d_ff, args.dropout = cfg.dropout;
    args.ff_activation = cfg.ff_activation, args.layer_index = i, args.mixer = &cfg.layers[i];
    args.ff = static_cast<size_t>(i) < cfg.ffns.size() ? &cfg.ffns[i] : nullptr;
    layers_.push_back(register_module("block" + std::to_string(i), make_layer(cfg.blocks[i], args)));
    if (auto standard = std::dynamic_pointer_cast<BlockImpl>(layers_.back())) blocks_.emplace_back(standard);
  }
  ln_final_ = register_module("ln_final", torch::nn::LayerNorm(torch::nn::LayerNormOptions({cfg.d_model})));
  if (cfg.act) {
    halting_ = register_module("halting", torch::nn::Linear(cfg.d_model, 1));
    torch::nn::init::constant_(halting_->bias, cfg.act_bias_init);  // t2t's act_halting_bias_init
  }
}

torch::Tensor TrunkImpl::step_blocks(torch::Tensor x, MixContext& ctx, ModelState* state, int64_t t) {
  for (size_t i = 0; i < layers_.size(); ++i) {
    ctx.state = state ? state->layers[(t - 1) * layers_.size() + i].get() : nullptr;  // each step's own cache
    x = layers_[i]->forward(x, ctx, cfg_.ff_chunks);
  }
  return x;
}

torch::Tensor TrunkImpl::forward(const torch::Tensor& tokens, bool causal,
                                 const torch::Tensor& padding_mask, ModelState* state,
                                 const torch::Tensor& global_mask, const torch::Tensor& prefix) {
  TORCH_CHECK(tokens.dim() == 2, "model: tokens must be [B, T], got ", tokens.sizes());
  TORCH_CHECK(!prefix.defined() || (prefix.dim() == 2 && prefix.size(1) == cfg_.d_model && !state),
              "model: a prefix must be [P, C] with C = ", cfg_.d_model, " and no state, got ", prefix.sizes());
  aux_loss_ = torch::Tensor();
  for (auto& l : layers_) l->clear_aux();
  const int64_t T = tokens.size(1) + (prefix.defined() ? prefix.size(0) : 0);
  const int64_t offset = state ? state->offset : 0;
  const int64_t steps = std::max<int64_t>(1, cfg_.recurrence_steps);
  if (state) TORCH_CHECK(state->layers.size() == layers_.size() * steps, "model: state has ",
                         state->layers.size(), " layers, model has ", layers_.size() * steps);
  auto x = embed_(tokens) * std::sqrt(static_cast<double>(cfg_.d_model));  // Vaswani et al. 2017, sec. 3.4
  if (prefix.defined()) x = torch::cat({prefix.unsqueeze(0).expand({x.size(0), -1, -1}).to(x.dtype()), x}, 1);
  auto pos = torch::arange(offset, offset + T, torch::TensorOptions().dtype(torch::kLong).device(tokens.device()));
  if (cfg_.recurrence_steps == 0) x = add_absolute_positions(x, cfg_, learned_pos_, offset);  // else at every step
  if (cfg_.dropout > 0) x = torch::dropout(x, cfg_.dropout, is_training());
  MixContext ctx;
  ctx.causal = causal;
  ctx.padding_mask = padding_mask;
  ctx.global_mask = global_mask;
  ctx.offset = offset;
  if (cfg_.reversible) {
    x = reversible_stack(blocks_, x, ctx, state, cfg_.ff_chunks);
  } else if (cfg_.recurrence_steps > 0) {  // Dehghani et al. 2019, sec. 2.1: one set of weights, S steps
    auto where = cfg_.positions == "none" ? torch::zeros({T, cfg_.d_model}, x.options())
                                          : sinusoidal_positions(pos, cfg_.d_model).to(x.dtype());
    auto coordinates = [&](const torch::Tensor& h, int64_t t) {  // P^t_i: position signal plus step signal
      return h + where + sinusoidal_positions(torch::full({1}, t, pos.options()), cfg_.d_model).to(x.dtype());
    };
    if (!cfg_.act) {
      for (int64_t t = 1; t <= steps; ++t) x = step_blocks(coordinates(x, t), ctx, state, t);
    } else {  // sec. 2.2: the halting unit and the block both read the state with this step's coordinates
      ActOptions o;
      o.epsilon = cfg_.act_epsilon, o.max_steps = steps, o.accumulated = cfg_.act_accumulated;
      o.run_to_cap = state != nullptr;  // decoding: later tokens may need any step's cache of this one
      auto st = act_loop(
          x,
          [&](const torch::Tensor& h, int64_t t) {
            auto s = coordinates(h, t);
            return std::make_pair(torch::sigmoid(halting_(s)).squeeze(-1), step_blocks(s, ctx, state, t));
          },
          o);
      x = st.out;
      ponder_map_ = (st.N + st.R).detach();
      ponder_ = ponder_map_.mean();
      aux_loss_ = act_ponder_cost(st, cfg_.act_loss_weight);
    }
  } else {
    x = step_blocks(x, ctx, state, 1);
  }
  if (state) state->offset += T;
  // The layers' auxiliary losses (sparse experts' balancing and z-losses) join the objective; each is logged by name,
  // summed over layers, beside the layers' metrics averaged over the layers that report them.
  aux_metrics_.clear();
  std::map<std::string, int64_t> reporting;
  for (auto& l : layers_) {
    for (const auto& kv : l->aux_losses()) {
      aux_loss_ = aux_loss_.defined() ? aux_loss_ + kv.second : kv.second;
      aux_metrics_[kv.first] += kv.second.item<double>();
    }
    for (const auto& kv : l->aux_metrics()) aux_metrics_[kv.first] += kv.second, ++reporting[kv.first];
  }
  for (const auto& kv : reporting) aux_metrics_[kv.first] /= static_cast<double>(kv.second);
  return ln_final_(x);
}

torch::Tensor add_absolute_positions(const torch::Tensor& x, const ModelConfig& cfg, torch::nn::Embedding& learned,
                                     int64_t offset) {
  if (cfg.positions != "sinusoidal" && cfg.positions != "learned") return x;
  const int64_t T = x.size(1);
  auto pos = torch::arange(offset, offset + T, torch::TensorOptions().dtype(torch::kLong).device(x.device()));
  if (cfg.positions == "sinusoidal") return x + sinusoidal_positions(pos, cfg.d_model).to(x.dtype());
  if (offset + T > cfg.max_len)
    throw Error("position " + std::to_string(offset + T - 1) + " exceeds model.max_len = " +
                std::to_string(cfg.max_len) + " of the learned positions");
  return x + learned(pos);
}

std::vector<std::unique_ptr<MixerState>> block_states(const std::vector<Layer>& layers, const std::vector<std::string>& names,
                                                      int64_t batch) {
  std::vector<std::unique_ptr<MixerState>> out;
  for (size_t i = 0; i < layers.size(); ++i) {
    auto st = layers[i]->initial_state(batch);
    if (!st) throw Error("layer " + std::to_string(i) + " (" + names[i] + ") cannot stream");
    out.push_back(std::move(st));
  }
  return out;
}

void ModelState::reorder(const torch::Tensor& index) {
  for (auto& s : layers)
    if (s) s->reorder(index);
  if (own) own->reorder(index);
}

std::vector<std::string> layer_names(const ModelConfig& cfg) {
  std::vector<std::string> out;
  for (size_t i = 0; i < cfg.layers.size(); ++i)
    out.push_back(cfg.layers[i].name.empty() ? "block " + cfg.blocks[i].name : "mixer " + cfg.layers[i].name);
  return out;
}

ModelState TrunkImpl::initial_state(int64_t batch) const {
  ModelState s;
  const int64_t steps = std::max<int64_t>(1, cfg_.recurrence_steps);  // a recurrent block keeps a state per step
  for (int64_t t = 0; t < steps; ++t)
    for (auto& st : block_states(layers_, layer_names(cfg_), batch)) s.layers.push_back(std::move(st));
  return s;
}

}  // namespace longseq
