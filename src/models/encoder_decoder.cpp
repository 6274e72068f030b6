// The original Transformer's encoder-decoder (Vaswani et al. 2017, sec. 3): see longseq/encoder_decoder.h.
#include "longseq/encoder_decoder.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "longseq/act.h"
#include "longseq/blocks.h"
#include "longseq/common.h"
#include "longseq/kernels/flash_attention.h"
#include "longseq/mixers/heads.h"

namespace longseq {

namespace {

void require(bool ok, const std::string& field, const std::string& what) {
  if (!ok) throw Error("encoder_decoder." + field + ": " + what);
}

// The spec's properties (mixer_properties) with its options checked, errors naming the config field.
MixerInfo checked_mixer(const MixerSpec& spec, const std::string& field) {
  try {
    validate_options(spec.options, find_mixer(spec.name).schema, field);
    return mixer_properties(spec);
  } catch (const Error& e) {
    throw Error("encoder_decoder." + field + ": " + e.what());
  }
}

}  // namespace

void validate(const EncoderDecoderConfig& c) {
  require(c.vocab_size >= 3, "vocab_size", "must be at least 3 (pad, bos and one token), got " +
                                               std::to_string(c.vocab_size));
  require(c.d_model > 0, "d_model", "must be positive, got " + std::to_string(c.d_model));
  require(c.n_heads > 0, "n_heads", "must be positive, got " + std::to_string(c.n_heads));
  require(c.d_model % c.n_heads == 0, "d_model",
          std::to_string(c.d_model) + " must be a multiple of n_heads " + std::to_string(c.n_heads));
  require(c.n_layers > 0, "n_layers", "must be positive, got " + std::to_string(c.n_layers));
  require(c.d_ff > 0, "d_ff", "must be positive, got " + std::to_string(c.d_ff));
  require(c.dropout >= 0 && c.dropout < 1, "dropout", "must be in [0, 1), got " + std::to_string(c.dropout));
  require(c.pad_id >= 0 && c.pad_id < c.vocab_size, "pad_id", "must be a token id below vocab_size");
  require(c.bos_id >= 0 && c.bos_id < c.vocab_size, "bos_id", "must be a token id below vocab_size");
  require(c.bos_id != c.pad_id, "bos_id", "must differ from pad_id");
  require(c.recurrence_steps >= 0, "recurrence_steps", "must be 0 (off) or positive, got " +
                                                          std::to_string(c.recurrence_steps));
  require(!c.act || c.recurrence_steps >= 1, "act", "needs recurrence_steps >= 1 (the cap on a position's steps)");
  require(!c.act || (c.act_epsilon > 0 && c.act_epsilon < 1), "act_epsilon", "must lie in (0, 1)");
  require(checked_mixer(c.encoder_mixer, "encoder_mixer").supports_bidirectional, "encoder_mixer",
          "mixer " + c.encoder_mixer.name + " does not support bidirectional mode");
  require(checked_mixer(c.decoder_mixer, "decoder_mixer").supports_causal, "decoder_mixer",
          "mixer " + c.decoder_mixer.name + " does not support causal mode");
  // A mixer whose causal mode lets later tokens decide what earlier ones see would leak the target (DESIGN invariant 2).
  const auto dec = checked_mixer(c.decoder_mixer, "decoder_mixer");
  bool strict = dec.strictly_causal;
  if (!strict) {  // strict when the spec sets the options that make it so
    strict = !dec.strictly_causal_options.empty();
    for (const auto& kv : dec.strictly_causal_options.items())
      strict = strict && c.decoder_mixer.options.contains(kv.key()) && c.decoder_mixer.options[kv.key()] == kv.value();
  }
  require(strict, "decoder_mixer",
          "mixer " + c.decoder_mixer.name + " is not strictly causal with these options (" +
              dec.strictly_causal_options.dump() + " makes it so); the decoder must not see later target tokens");
}

DecoderLayerImpl::DecoderLayerImpl(const EncoderDecoderConfig& c, int64_t layer_index)
    : heads_(c.n_heads), post_norm_(c.post_norm), dropout_(c.dropout) {
  self_ = register_module("self", make_mixer(c.decoder_mixer, c.d_model, c.n_heads, layer_index));
  // Encoder-decoder attention's own projections (sec. 3.2.3); bias-free as in the paper's W^Q, W^K, W^V, W^O.
  q_ = register_module("cross_q", bias_free_linear(c.d_model, c.d_model));
  k_ = register_module("cross_k", bias_free_linear(c.d_model, c.d_model));
  v_ = register_module("cross_v", bias_free_linear(c.d_model, c.d_model));
  out_ = register_module("cross_out", bias_free_linear(c.d_model, c.d_model));
  ff_ = register_module("ff", FeedForward(c.d_model, c.d_ff, c.dropout, "relu"));  // sec. 3.3
  auto ln = [&] { return torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.d_model})); };
  ln_self_ = register_module("ln_self", ln());
  ln_cross_ = register_module("ln_cross", ln());
  ln_ff_ = register_module("ln_ff", ln());
}

torch::Tensor DecoderLayerImpl::drop(const torch::Tensor& h) {
  return dropout_ > 0 ? torch::dropout(h, dropout_, is_training()) : h;
}

std::pair<torch::Tensor, torch::Tensor> DecoderLayerImpl::cross_kv(const torch::Tensor& memory) {
  return {split_heads(k_(memory), heads_), split_heads(v_(memory), heads_)};
}

torch::Tensor DecoderLayerImpl::cross(const torch::Tensor& x, const torch::Tensor& k, const torch::Tensor& v,
                                      const torch::Tensor& src_pad) {
  // Queries from the decoder, keys and values from the encoder output, source pads masked (sec. 3.2.3).
  AttentionMask mask{false, src_pad};
  return out_(merge_heads(exact_attention(split_heads(q_(x), heads_), k, v, mask)));
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& cross_k,
                                        const torch::Tensor& cross_v, const torch::Tensor& src_pad, MixContext& ctx) {
  if (post_norm_) {  // LayerNorm(x + Dropout(Sublayer(x))) (sec. 3.1, 5.4)
    auto y = ln_self_(x + drop(self_->forward(x, ctx)));
    y = ln_cross_(y + drop(cross(y, cross_k, cross_v, src_pad)));
    return ln_ff_(y + drop(ff_->forward(y)));
  }
  auto y = x + drop(self_->forward(ln_self_(x), ctx));  // pre-norm: x + Dropout(Sublayer(LN(x)))
  y = y + drop(cross(ln_cross_(y), cross_k, cross_v, src_pad));
  return y + drop(ff_->forward(ln_ff_(y)));
}

EncoderDecoderImpl::EncoderDecoderImpl(const EncoderDecoderConfig& cfg) : cfg_(cfg) {
  validate(cfg_);
  const int64_t C = cfg_.d_model;
  embed_ = register_module("embed", torch::nn::Embedding(cfg_.vocab_size, C));
  {
    // N(0, d^-0.5) so sqrt(d) E has unit scale; the pad row starts at zero as in tensor2tensor (transformer.md sec. 1).
    torch::NoGradGuard no_grad;
    torch::nn::init::normal_(embed_->weight, 0.0, 1.0 / std::sqrt(static_cast<double>(C)));
    embed_->weight[cfg_.pad_id].zero_();
  }
  BlockSpec block;
  block.name = cfg_.post_norm ? "post_norm" : "standard";
  for (int64_t i = 0; i < cfg_.n_layers; ++i) {
    BlockArgs a;
    a.d_model = C, a.n_heads = cfg_.n_heads, a.d_ff = cfg_.d_ff, a.dropout = cfg_.dropout, a.layer_index = i;
    a.ff_activation = "relu";  // sec. 3.3: max(0, x W1 + b1) W2 + b2
    a.mixer = &cfg_.encoder_mixer;
    encoder_.push_back(register_module("encoder_" + std::to_string(i), make_layer(block, a)));
  }
  for (int64_t i = 0; i < cfg_.n_layers; ++i)
    decoder_.push_back(register_module("decoder_" + std::to_string(i), DecoderLayer(cfg_, i)));
  if (cfg_.act) {  // one halting unit per stack, its bias as t2t's act_halting_bias_init
    enc_halting_ = register_module("encoder_halting", torch::nn::Linear(C, 1));
    dec_halting_ = register_module("decoder_halting", torch::nn::Linear(C, 1));
    torch::nn::init::constant_(enc_halting_->bias, cfg_.act_bias_init);
    torch::nn::init::constant_(dec_halting_->bias, cfg_.act_bias_init);
  }
  if (!cfg_.post_norm) {  // pre-norm leaves each stack's output unnormalised: one final LayerNorm each
    enc_final_ = register_module("encoder_ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({C})));
    dec_final_ = register_module("decoder_ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({C})));
  }
}

torch::Tensor EncoderDecoderImpl::embed(const torch::Tensor& tokens, int64_t offset) {
  TORCH_CHECK(tokens.dim() == 2, "encoder_decoder: tokens must be [B, T], got ", tokens.sizes());
  const int64_t T = tokens.size(1), C = cfg_.d_model;
  auto pos = torch::arange(offset, offset + T, torch::TensorOptions().dtype(torch::kLong).device(tokens.device()));
  // sqrt(d) on the lookup only, not on the output projection (sec. 3.4); positions from 0 (sec. 3.5), or with the
  // recurrence at every step (coordinates).
  auto x = embed_(tokens) * std::sqrt(static_cast<double>(C));
  if (cfg_.recurrence_steps == 0) x = x + sinusoidal_positions(pos, C).unsqueeze(0);
  return cfg_.dropout > 0 ? torch::dropout(x, cfg_.dropout, is_training()) : x;  // sec. 5.4
}

torch::Tensor EncoderDecoderImpl::coordinates(int64_t offset, int64_t T, int64_t t,
                                              const torch::TensorOptions& opts) const {
  auto lopts = torch::TensorOptions().dtype(torch::kLong).device(opts.device());
  return (sinusoidal_positions(torch::arange(offset, offset + T, lopts), cfg_.d_model) +
          sinusoidal_positions(torch::full({1}, t, lopts), cfg_.d_model))
      .to(opts.dtype());
}

torch::Tensor EncoderDecoderImpl::recur(torch::Tensor x, int64_t offset,
                                        const std::function<torch::Tensor(const torch::Tensor&, int64_t)>& step,
                                        torch::nn::Linear& halting, bool run_to_cap, torch::Tensor* cost,
                                        torch::Tensor* ponder) {
  const int64_t T = x.size(1);
  if (!cfg_.act) {
    for (int64_t t = 1; t <= cfg_.recurrence_steps; ++t) x = step(x + coordinates(offset, T, t, x.options()), t);
    return x;
  }
  ActOptions o;
  o.epsilon = cfg_.act_epsilon, o.max_steps = cfg_.recurrence_steps, o.accumulated = cfg_.act_accumulated;
  o.run_to_cap = run_to_cap;  // decoding: later tokens may read any step's cache of this one
  auto st = act_loop(
      x,
      [&](const torch::Tensor& h, int64_t t) {
        auto s = h + coordinates(offset, T, t, h.options());  // the halting unit and the block read the same state
        return std::make_pair(torch::sigmoid(halting(s)).squeeze(-1), step(s, t));
      },
      o);
  *cost = act_ponder_cost(st, cfg_.act_loss_weight);
  *ponder = (st.N + st.R).mean().detach();
  return st.out;
}

torch::Tensor EncoderDecoderImpl::aux_loss() const {
  if (!enc_cost_.defined()) return dec_cost_;
  return dec_cost_.defined() ? enc_cost_ + dec_cost_ : enc_cost_;
}

torch::Tensor EncoderDecoderImpl::ponder() const {
  if (!enc_ponder_.defined()) return dec_ponder_;
  return dec_ponder_.defined() ? (enc_ponder_ + dec_ponder_) / 2 : enc_ponder_;
}

torch::Tensor EncoderDecoderImpl::encode(const torch::Tensor& src, const torch::Tensor& src_pad) {
  MixContext ctx;
  ctx.causal = false;
  ctx.padding_mask = src_pad;
  auto x = embed(src, 0);
  auto blocks = [&](torch::Tensor h, int64_t) {
    for (auto& layer : encoder_) h = layer->forward(h, ctx);
    return h;
  };
  x = cfg_.recurrence_steps > 0 ? recur(x, 0, blocks, enc_halting_, false, &enc_cost_, &enc_ponder_) : blocks(x, 1);
  return enc_final_ ? enc_final_(x) : x;
}

torch::Tensor EncoderDecoderImpl::decode_hidden(const torch::Tensor& tgt_in, const torch::Tensor& memory,
                                                const torch::Tensor& src_pad, EncoderDecoderState* state) {
  TORCH_CHECK(state || memory.defined(), "encoder_decoder: decode needs the memory or a state");
  const size_t steps = static_cast<size_t>(std::max<int64_t>(1, cfg_.recurrence_steps));
  TORCH_CHECK(!state || state->layers.size() == decoder_.size() * steps, "encoder_decoder: the state has ",
              state ? state->layers.size() : 0, " layers, the decoder ", decoder_.size() * steps);
  const int64_t offset = state ? state->offset : 0;
  const torch::Tensor& pad = state ? state->src_pad : src_pad;
  auto x = embed(tgt_in, offset);
  std::vector<std::pair<torch::Tensor, torch::Tensor>> cross(decoder_.size());  // shared by the steps
  if (!state)
    for (size_t i = 0; i < decoder_.size(); ++i) cross[i] = decoder_[i]->cross_kv(memory);
  auto blocks = [&](torch::Tensor h, int64_t t) {
    for (size_t i = 0; i < decoder_.size(); ++i) {
      MixContext ctx;  // one per layer and step: each has its own self state
      ctx.causal = true;
      ctx.offset = offset;
      torch::Tensor k = cross[i].first, v = cross[i].second;
      if (state) {
        auto& ls = state->layers[static_cast<size_t>(t - 1) * decoder_.size() + i];
        ctx.state = ls.self.get();
        k = ls.cross_k, v = ls.cross_v;
      }
      h = decoder_[i]->forward(h, k, v, pad, ctx);
    }
    return h;
  };
  x = cfg_.recurrence_steps > 0 ? recur(x, offset, blocks, dec_halting_, state != nullptr, &dec_cost_, &dec_ponder_)
                                : blocks(x, 1);
  if (state) state->offset += tgt_in.size(1);
  return dec_final_ ? dec_final_(x) : x;
}

torch::Tensor EncoderDecoderImpl::decode(const torch::Tensor& tgt_in, const torch::Tensor& memory,
                                         const torch::Tensor& src_pad, EncoderDecoderState* state) {
  // Tied pre-softmax projection: logits = y E^T, no sqrt(d), no bias (sec. 3.4).
  return torch::matmul(decode_hidden(tgt_in, memory, src_pad, state), embed_->weight.t());
}

torch::Tensor EncoderDecoderImpl::forward(const torch::Tensor& src, const torch::Tensor& tgt_in,
                                          const torch::Tensor& src_pad) {
  return decode(tgt_in, encode(src, src_pad), src_pad);
}

EncoderDecoderState EncoderDecoderImpl::initial_state(const torch::Tensor& memory, const torch::Tensor& src_pad) {
  TORCH_CHECK(memory.dim() == 3, "encoder_decoder: memory must be [B, S, C], got ", memory.sizes());
  EncoderDecoderState state;
  state.src_pad = src_pad;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> cross;
  for (auto& layer : decoder_) cross.push_back(layer->cross_kv(memory));  // once per sentence, not per token or step
  for (int64_t t = 0; t < std::max<int64_t>(1, cfg_.recurrence_steps); ++t)
    for (size_t i = 0; i < decoder_.size(); ++i) {
      EncoderDecoderState::LayerState s;
      s.self = decoder_[i]->initial_state(memory.size(0));
      if (!s.self) throw Error("encoder_decoder.decoder_mixer: mixer " + cfg_.decoder_mixer.name + " cannot stream");
      s.cross_k = cross[i].first, s.cross_v = cross[i].second;
      state.layers.push_back(std::move(s));
    }
  return state;
}

void EncoderDecoderState::reorder(const torch::Tensor& index) {
  const int64_t rows = layers.empty() ? rows_of({src_pad}) : rows_of({layers.front().cross_k, src_pad});
  auto i = reorder_index(index, rows, "encoder_decoder state");
  for (auto& l : layers) {
    l.self->reorder(i);
    l.cross_k = select_rows(l.cross_k, i), l.cross_v = select_rows(l.cross_v, i);
  }
  src_pad = select_rows(src_pad, i);
}

namespace {

// The memory [1, S, C] of one sentence src ([S] or [1, S]), encoded without gradients.
torch::Tensor encode_one(EncoderDecoderImpl& model, const torch::Tensor& src) {
  TORCH_CHECK(src.dim() == 1 || (src.dim() == 2 && src.size(0) == 1),
              "translation step: src must be one sentence, [S] or [1, S], got ", src.sizes());
  torch::NoGradGuard no_grad;
  return model.encode(src.dim() == 1 ? src.unsqueeze(0) : src);
}

// A fresh state for memory [N, S, C] and src_pad that can reorder its rows, or none (the decoder mixer does not stream,
// or a state refuses reorder): probing with the identity changes nothing.
std::shared_ptr<EncoderDecoderState> reorderable_state(EncoderDecoderImpl& model, const torch::Tensor& memory,
                                                       const torch::Tensor& src_pad, std::string* why) {
  try {
    auto st = std::make_shared<EncoderDecoderState>(model.initial_state(memory, src_pad));
    st->reorder(torch::arange(memory.size(0), torch::kLong));
    return st;
  } catch (const Error& e) {
    if (why) *why = e.what();
    return nullptr;
  }
}

// The cached step: the state's rows follow the parents, then one token per hypothesis.
BeamStep cached_translation_step(EncoderDecoderImpl& model, std::shared_ptr<EncoderDecoderState> state) {
  EncoderDecoderImpl* m = &model;
  const auto device = state->layers.front().cross_k.device();
  return [m, state, device](const torch::Tensor& parents, const torch::Tensor& tokens) {
    torch::NoGradGuard no_grad;
    TORCH_CHECK(parents.dim() == 1 && tokens.dim() == 1 && parents.size(0) == tokens.size(0),
                "translation step: parents and tokens must be [n] each, got ", parents.sizes(), " and ",
                tokens.sizes());
    state->reorder(parents);
    auto logits = m->decode(tokens.to(device, torch::kLong).unsqueeze(1), {}, {}, state.get());  // [n, 1, V]
    return torch::log_softmax(logits.select(1, 0).to(torch::kDouble), -1);
  };
}

// The recomputing step: every hypothesis's whole prefix through the decoder, each call, against its sentence's
// memory row (memory [N, S, C], src_pad [N, S] or undefined; the start state has one row per sentence).
BeamStep recomputing_translation_step(EncoderDecoderImpl& model, const torch::Tensor& memory,
                                      const torch::Tensor& src_pad) {
  struct Rows {
    std::vector<std::vector<int64_t>> prefixes;
    std::vector<int64_t> sentence;  // the memory row of each hypothesis
  };
  auto rows = std::make_shared<Rows>();
  rows->prefixes.resize(memory.size(0));
  for (int64_t s = 0; s < memory.size(0); ++s) rows->sentence.push_back(s);
  EncoderDecoderImpl* m = &model;
  return [m, memory, src_pad, rows](const torch::Tensor& parents, const torch::Tensor& tokens) {
    torch::NoGradGuard no_grad;
    auto par = parents.to(torch::kCPU).to(torch::kLong).contiguous();
    auto tok = tokens.to(torch::kCPU).to(torch::kLong).contiguous();
    TORCH_CHECK(par.dim() == 1 && tok.dim() == 1 && par.size(0) == tok.size(0),
                "translation step: parents and tokens must be [n] each, got ", par.sizes(), " and ", tok.sizes());
    const int64_t n = tok.size(0), held = static_cast<int64_t>(rows->prefixes.size());
    Rows next;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t p = par[i].item<int64_t>();
      if (p < 0 || p >= held)
        throw Error("translation step: parent " + std::to_string(p) + " is out of range for " + std::to_string(held) +
                    " hypotheses");
      next.prefixes.push_back(rows->prefixes[p]);
      next.prefixes.back().push_back(tok[i].item<int64_t>());
      next.sentence.push_back(rows->sentence[p]);
    }
    *rows = std::move(next);
    const int64_t L = static_cast<int64_t>(rows->prefixes.front().size());
    auto tgt = torch::empty({n, L}, torch::kLong);
    for (int64_t i = 0; i < n; ++i) tgt[i].copy_(torch::tensor(rows->prefixes[i], torch::kLong));
    auto which = torch::tensor(rows->sentence, torch::kLong);
    auto logits = m->decode(tgt.to(memory.device()), select_rows(memory, which), select_rows(src_pad, which));
    return torch::log_softmax(logits.select(1, L - 1).to(torch::kDouble), -1);
  };
}

// The step over memory [N, S, C] and src_pad, decoding as `how` says.
BeamStep translation_step_over(EncoderDecoderImpl& model, const torch::Tensor& memory, const torch::Tensor& src_pad,
                               TranslationDecoding how) {
  if (how != TranslationDecoding::kRecompute) {
    std::string why;
    torch::NoGradGuard no_grad;
    if (auto state = reorderable_state(model, memory, src_pad, &why)) return cached_translation_step(model, state);
    if (how == TranslationDecoding::kCached)
      throw Error("translation step: cannot decode mixer " + model.config().decoder_mixer.name +
                  " with a cache: " + why);
  }
  return recomputing_translation_step(model, memory, src_pad);
}

}  // namespace

bool translation_can_cache(EncoderDecoderImpl& model) {
  torch::NoGradGuard no_grad;
  auto memory = torch::zeros({1, 1, model.config().d_model}, model.embedding()->weight.options());
  return reorderable_state(model, memory, {}, nullptr) != nullptr;
}

BeamStep make_translation_step(EncoderDecoderImpl& model, const torch::Tensor& src, TranslationDecoding how) {
  return translation_step_over(model, encode_one(model, src), {}, how);
}

std::vector<BeamHypothesis> translate_batch(EncoderDecoderImpl& model, const std::vector<torch::Tensor>& sources,
                                            BeamOptions options, TranslationDecoding how) {
  if (sources.empty()) throw Error("translate_batch: no source sentences");
  int64_t S = 0;
  for (size_t i = 0; i < sources.size(); ++i) {
    if (sources[i].dim() != 1 || sources[i].numel() < 1)
      throw Error("translate_batch: source " + std::to_string(i) + " must be a non-empty [S] of token ids, got " +
                  c10::str(sources[i].sizes()));
    S = std::max(S, sources[i].size(0));
  }
  const int64_t N = static_cast<int64_t>(sources.size());
  const auto device = model.embedding()->weight.device();
  auto src = torch::full({N, S}, model.config().pad_id, torch::TensorOptions().dtype(torch::kLong).device(device));
  auto pad = torch::ones({N, S}, torch::TensorOptions().dtype(torch::kBool).device(device));
  for (int64_t i = 0; i < N; ++i) {  // right padding, masked in the encoder and in the cross-attention
    const int64_t n = sources[i].size(0);
    src[i].narrow(0, 0, n).copy_(sources[i]);
    pad[i].narrow(0, 0, n).fill_(false);
  }
  torch::Tensor memory;
  {
    torch::NoGradGuard no_grad;
    memory = model.encode(src, pad);
  }
  options.bos = model.config().bos_id;  // the decoder input starts with the model's start token
  return beam_search_batch(translation_step_over(model, memory, pad, how), N, options);
}

BeamHypothesis translate_greedy(EncoderDecoderImpl& model, const torch::Tensor& src, BeamOptions options,
                                TranslationDecoding how) {
  options.bos = model.config().bos_id;  // the decoder input starts with the model's start token
  return greedy_search(make_translation_step(model, src, how), options);
}

BeamHypothesis translate_beam(EncoderDecoderImpl& model, const torch::Tensor& src, BeamOptions options,
                              TranslationDecoding how) {
  options.bos = model.config().bos_id;  // the decoder input starts with the model's start token
  return beam_search(make_translation_step(model, src, how), options);
}

}  // namespace longseq
