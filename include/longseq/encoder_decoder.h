// The original Transformer's encoder-decoder (Vaswani et al. 2017, sec. 3; ../shared/mechanisms/transformer.md sec. 1):
// one embedding tied three ways (sec. 3.4), sinusoidal positions (sec. 3.5), an encoder stack of registered block kinds
// around a bidirectional mixer, and a decoder stack of self-attention (a registered causal mixer), encoder-decoder
// attention and feed-forward sublayers (sec. 3.1, 3.2.3). Post-norm as published, or pre-norm with final LayerNorms.
#pragma once
#include <torch/torch.h>

#include <functional>

#include <memory>
#include <vector>

#include "longseq/layers.h"
#include "longseq/registry.h"
#include "longseq/translation.h"

namespace longseq {

struct EncoderDecoderConfig {
  int64_t vocab_size = 0;  // joint source-target vocabulary (the three-way tie needs one, sec. 3.4)
  int64_t d_model = 512, n_heads = 8;
  int64_t n_layers = 6;  // encoder layers and decoder layers each (sec. 3.1: N = 6)
  int64_t d_ff = 2048;
  double dropout = 0.1;
  bool post_norm = true;  // LN(x + Sublayer(x)) as published (sec. 3.1); false: x + Sublayer(LN(x)) + final LNs
  MixerSpec encoder_mixer{"full", Json::object()};  // run bidirectionally
  MixerSpec decoder_mixer{"full", Json::object()};  // run causally (sec. 3.2.3 masking)
  int64_t pad_id = 0, bos_id = 1;
  // Universal Transformer (Dehghani et al. 2019, sec. 2.1): each stack's n_layers blocks, one set of weights, applied
  // recurrence_steps times with the coordinate embedding (position and step sinusoids) added before each step instead
  // of the positions once at the input; 0 = off. With act (sec. 2.2), a halting unit per stack and position:
  // recurrence_steps caps the steps, and aux_loss() is act_loss_weight * mean(N + R) of each stack, summed.
  int64_t recurrence_steps = 0;
  bool act = false;
  double act_epsilon = 0.01, act_loss_weight = 0.01, act_bias_init = 1.0;
  bool act_accumulated = false;
};

// Throws Error naming the offending field.
void validate(const EncoderDecoderConfig& cfg);

// Incremental decoding: per decoder layer (and recurrence step: entry (t - 1) n_layers + i) the self mixer's streaming
// state and the encoder-decoder attention's keys and values, projected once from the memory; the position of the
// next target token.
struct EncoderDecoderState {
  struct LayerState {
    std::unique_ptr<MixerState> self;
    torch::Tensor cross_k, cross_v;  // [B, H, S, D]
  };
  std::vector<LayerState> layers;
  torch::Tensor src_pad;  // [B, S] bool or undefined
  int64_t offset = 0;
  // Keeps batch rows `index` ([n] long, n may differ from B, rows may repeat; a beam's parents): each layer's self
  // state (MixerState::reorder, an Error naming a state that cannot; the state is then unusable), the cross keys
  // and values, the source padding. The offset is shared by all rows.
  void reorder(const torch::Tensor& index);
};

// One decoder layer (sec. 3.1): masked self-attention, encoder-decoder attention, feed-forward.
class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const EncoderDecoderConfig& cfg, int64_t layer_index);
  // x [B, T, C]; cross_k, cross_v [B, H, S, D]; ctx carries the causal flag and the self mixer's state and offset.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cross_k, const torch::Tensor& cross_v,
                        const torch::Tensor& src_pad, MixContext& ctx);
  // memory [B, S, C] -> the encoder-decoder attention's keys and values [B, H, S, D].
  std::pair<torch::Tensor, torch::Tensor> cross_kv(const torch::Tensor& memory);
  std::unique_ptr<MixerState> initial_state(int64_t batch) const { return self_->initial_state(batch); }

 private:
  int64_t heads_;
  bool post_norm_;
  double dropout_;
  Mixer self_;
  torch::nn::Linear q_{nullptr}, k_{nullptr}, v_{nullptr}, out_{nullptr};
  FeedForward ff_{nullptr};
  torch::nn::LayerNorm ln_self_{nullptr}, ln_cross_{nullptr}, ln_ff_{nullptr};
  torch::Tensor drop(const torch::Tensor& h);
  torch::Tensor cross(const torch::Tensor& x, const torch::Tensor& k, const torch::Tensor& v,
                      const torch::Tensor& src_pad);
};
TORCH_MODULE(DecoderLayer);

class EncoderDecoderImpl : public torch::nn::Module {
 public:
  explicit EncoderDecoderImpl(const EncoderDecoderConfig& cfg);
  // src [B, S] long, src_pad [B, S] bool (true = pad) or undefined -> memory [B, S, C].
  torch::Tensor encode(const torch::Tensor& src, const torch::Tensor& src_pad = {});
  // tgt_in [B, T] long (targets shifted right, starting with bos_id) -> the decoder's last hidden states [B, T, C].
  // With a state, tgt_in continues the target held in it (memory and src_pad are then taken from the state).
  torch::Tensor decode_hidden(const torch::Tensor& tgt_in, const torch::Tensor& memory, const torch::Tensor& src_pad,
                              EncoderDecoderState* state = nullptr);
  // -> logits [B, T, V] = decode_hidden(...) E^T.
  torch::Tensor decode(const torch::Tensor& tgt_in, const torch::Tensor& memory, const torch::Tensor& src_pad,
                       EncoderDecoderState* state = nullptr);
  torch::Tensor forward(const torch::Tensor& src, const torch::Tensor& tgt_in, const torch::Tensor& src_pad = {});
  // A fresh decoding state for memory [B, S, C]; throws Error if the decoder mixer cannot stream.
  EncoderDecoderState initial_state(const torch::Tensor& memory, const torch::Tensor& src_pad = {});
  torch::nn::Embedding& embedding() { return embed_; }
  const EncoderDecoderConfig& config() const { return cfg_; }
  // ACT (config().act) after a forward: the ponder cost to add to the objective and the mean N + R over the encoder's
  // and the decoder's positions (the last encode and decode_hidden calls, averaged); undefined otherwise.
  torch::Tensor aux_loss() const;
  torch::Tensor ponder() const;

 private:
  EncoderDecoderConfig cfg_;
  torch::nn::Linear enc_halting_{nullptr}, dec_halting_{nullptr};  // ACT only
  torch::Tensor enc_cost_, dec_cost_, enc_ponder_, dec_ponder_;
  // The coordinate embedding of step t for positions [offset, offset + T) (sec. 2.1), [T, C].
  torch::Tensor coordinates(int64_t offset, int64_t T, int64_t t, const torch::TensorOptions& opts) const;
  // Runs `step` (h, t) -> h' recurrence_steps times, or to ACT's halting with `halting` (run_to_cap when decoding
  // through a state); writes the stack's cost and ponder when ACT.
  torch::Tensor recur(torch::Tensor x, int64_t offset, const std::function<torch::Tensor(const torch::Tensor&, int64_t)>& step,
                      torch::nn::Linear& halting, bool run_to_cap, torch::Tensor* cost, torch::Tensor* ponder);
  torch::nn::Embedding embed_{nullptr};
  std::vector<Layer> encoder_;
  std::vector<DecoderLayer> decoder_;
  torch::nn::LayerNorm enc_final_{nullptr}, dec_final_{nullptr};  // pre-norm only
  torch::Tensor embed(const torch::Tensor& tokens, int64_t offset);
};
TORCH_MODULE(EncoderDecoder);

// How a translation step runs the decoder. kCached keeps an EncoderDecoderState for the alive hypotheses, reorders
// it by the parents and feeds one token per hypothesis (O(L) per step, transformer.md sec. 5); an Error when the
// decoder mixer cannot stream or its state cannot reorder rows. kRecompute runs the decoder over every hypothesis's
// whole prefix (O(L^2) per step; any causal mixer). kAuto: kCached when it can, else kRecompute, silently.
enum class TranslationDecoding { kAuto, kCached, kRecompute };

// A BeamStep over ONE source sentence src ([S] or [1, S] long, no padding): encodes once, then decodes as `how`
// says. Runs without gradients; put the model in eval mode first.
BeamStep make_translation_step(EncoderDecoderImpl& model, const torch::Tensor& src,
                               TranslationDecoding how = TranslationDecoding::kAuto);
// Whether kAuto decodes `model` with the cache (its decoder mixer streams and its state reorders rows).
bool translation_can_cache(EncoderDecoderImpl& model);
// greedy_search / beam_search over make_translation_step; options.bos is replaced by the model's bos_id.
BeamHypothesis translate_greedy(EncoderDecoderImpl& model, const torch::Tensor& src, BeamOptions options,
                                TranslationDecoding how = TranslationDecoding::kAuto);
BeamHypothesis translate_beam(EncoderDecoderImpl& model, const torch::Tensor& src, BeamOptions options,
                              TranslationDecoding how = TranslationDecoding::kAuto);
// Beam search over several sentences at once (each [S_i] long, no padding): one padded encoder pass, then one decoder
// call per position for every sentence still searching (beam_search_batch); each result is what translate_beam
// gives that sentence alone, up to float round-off of the batched, padded computation.
std::vector<BeamHypothesis> translate_batch(EncoderDecoderImpl& model, const std::vector<torch::Tensor>& sources,
                                            BeamOptions options, TranslationDecoding how = TranslationDecoding::kAuto);

}  // namespace longseq
