// Run configuration: one JSON file with three sections, "model", "data" and
// "train". Every key is described by a schema (see schema.h); unknown keys,
// wrong types and out-of-range values are errors that name the key.
#pragma once
#include <string>
#include <vector>

#include "longseq/ffn.h"
#include "longseq/registry.h"
#include "longseq/schema.h"

namespace longseq {

const Schema& model_schema();
const Schema& data_schema();
const Schema& train_schema();

struct ModelConfig {
  std::string type;  // decoder_lm | perceiver_ar | encoder_classifier
  int64_t vocab_size = 256;
  int64_t d_model = 256;
  int64_t n_heads = 4;
  int64_t n_layers = 4;
  int64_t d_ff = 1024;
  int64_t max_len = 2048;
  std::string positions;  // sinusoidal | learned | none | rotary (perceiver_ar)
  double dropout = 0.0;
  bool reversible = false;  // Reformer reversible residuals (Kitaev et al. 2020, sec. 3)
  int64_t ff_chunks = 1;    // feed-forward over this many slices of the length (sec. 3, eq. 10)
  bool tie_embeddings = true;
  int64_t output_modules = 0;  // > 0: the sparse loss layer (FactoredDense) instead of the dense output
  int64_t recurrence_steps = 0;   // Universal Transformer: the blocks applied this many times (0 = once, no recurrence)
  bool act = false;               // adaptive halting over those steps (recurrence_steps = the cap)
  double act_epsilon = 0.01, act_loss_weight = 0.01, act_bias_init = 1.0;
  bool act_accumulated = false;
  std::string ff_activation = "gelu";  // gelu | squared_relu
  // Perceiver AR (Hawthorne et al. 2022): the last `latents` inputs become latents that cross-attend to all.
  int64_t latents = 256;
  int64_t reset_latents = 0;        // latents of the decoding refill pass (0 = latents / 2)
  double context_dropout = 0.0;     // share of the context before the latents dropped per training example
  double rotary_fraction = 0.5;     // share of each head's channels rotated
  double rotary_max_wavelength = 0; // slowest rotary band (0 = max_len)
  double z_loss = 1e-4;             // weight of mean(log Z)^2 over the scored logits
  std::vector<MixerSpec> layers;  // one per layer (empty name where the block kind has no mixer)
  std::vector<BlockSpec> blocks;  // one per layer
  std::vector<FfnSpec> ffns;      // one per layer: the standard block's feed-forward kind
  // What layer i is, for messages: its mixer's name, or its block kind's.
  std::string layer_name(size_t i) const { return layers[i].name.empty() ? blocks[i].name : layers[i].name; }
  int64_t num_classes = 2;
  std::string pooling;  // mean | first | cls
  int64_t classifier_hidden = 0;  // 0 = a linear head; > 0 = Dense(hidden) -> ReLU -> Dense(num_classes)
  bool dual_encoder = false;      // two documents, one shared encoder, head on [u, v, u*v, u-v] (LRA Retrieval)
  MixerSpec decoder_mixer;  // encoder_decoder: the decoder's self-attention (model.mixer runs the encoder)
  bool post_norm = true;    // encoder_decoder: model.norm = post

  static ModelConfig from_json(const Json& j);  // j: the "model" section
};

struct EncoderDecoderConfig;
// model.type = encoder_decoder: the model's config; the specials follow the tokenizer's `tokenizer_vocab` ids (pad,
// bos, eos), so model.vocab_size must be tokenizer_vocab + 3 (an Error otherwise).
EncoderDecoderConfig encoder_decoder_config(const ModelConfig& cfg, int64_t tokenizer_vocab);

// Sets each option of `overrides` ({"mem_len": 3800, ...}) on every layer whose mixer has it, validated by the
// mixer's schema (Transformer-XL's longer memory at test time). An option no layer's mixer has is an Error.
void override_mixer_options(ModelConfig& cfg, const Json& overrides, const std::string& where);

// "key=value" -> {"key": value}; the value is read as JSON (numbers, true/false) or else taken as a string.
// Errors name `where` (the command-line option) and prefix + key.
Json parse_option_assignment(const std::string& text, const std::string& where, const std::string& prefix = "");

struct RunConfig {
  Json model, data, train;  // each validated, defaults filled
  Json to_json() const;
  static RunConfig from_json(const Json& j);
};

// Parses JSON text; a syntax error names `source`, line and column.
Json parse_json_text(const std::string& text, const std::string& source);
RunConfig load_run_config(const std::string& path);

// The embedded default: the README's main job (byte LM on the Python docs).
const char* default_config_text();

}  // namespace longseq
