// The registry of model kinds: the only place that knows them all.
#include "longseq/common.h"
#include "longseq/models.h"
#include "longseq/perceiver_ar.h"

namespace longseq {

const std::vector<ModelKindInfo>& model_kind_registry() {
  static const std::vector<ModelKindInfo> kinds = {
      {"decoder_lm", "decoder-only language model: embedding, positions, the layers' blocks, tied output",
       "Vaswani et al. 2017; Radford et al. 2018", {"positions", "max_len", "reversible", "ff_chunks"}, true},
      {"perceiver_ar",
       "the last `latents` inputs become latents that cross-attend causally to the whole context, then n_layers "
       "causal self-attention layers over the latents; loss on the latents only; cached decoding with refill passes",
       "Hawthorne et al. 2022, Perceiver AR, sec. 3 and App. E.3",
       {"latents", "reset_latents", "context_dropout", "positions (rotary)", "rotary_fraction",
        "rotary_max_wavelength", "z_loss", "ff_activation (auto = squared_relu)"},
       true},
      {"encoder_classifier",
       "bidirectional encoder with mean, first-token or CLS pooling and a linear or MLP classifier, or two towers "
       "over a pair of documents (dual_encoder); trained on classification corpora (data.corpus listops, imdb, "
       "cifar10, aan, pathfinder) by `longseq train` and `longseq lra` (docs/lra.md)",
       "Devlin et al. 2019; Tay et al. 2021 (LRA)", {"num_classes", "pooling", "classifier_hidden", "dual_encoder"},
       false},
      {"encoder_decoder",
       "the original Transformer for translation: encoder of model.mixer, decoder of model.decoder_mixer with exact "
       "encoder-decoder attention, three-way tied embedding, post- or pre-norm; trained on sentence pairs, decoded "
       "by beam search (`longseq translate`, docs/translation.md)",
       "Vaswani et al. 2017, Attention Is All You Need, sec. 3 and 5", {"decoder_mixer", "norm"}, false},
      {"universal_transformer (decoder_lm, encoder_classifier, encoder_decoder)",
       "depth recurrence: the n_layers blocks, one set of weights, applied recurrence_steps times with the "
       "coordinate embedding before each step; with act, adaptive halting per position and the ponder cost "
       "(encoder_decoder: in both stacks, each with its halting unit, the two costs summed)",
       "Dehghani et al. 2019, Universal Transformers, sec. 2.1-2.2",
       {"recurrence_steps", "act", "act_epsilon", "act_loss_weight", "act_bias_init", "act_update"}, false},
  };
  return kinds;
}

std::vector<std::string> language_model_types() {
  std::vector<std::string> out;
  for (const auto& k : model_kind_registry())
    if (k.language_model) out.push_back(k.name);
  return out;
}

LanguageModel make_language_model(const ModelConfig& cfg) {
  if (cfg.type == "decoder_lm") return std::make_shared<DecoderLMImpl>(cfg);
  if (cfg.type == "perceiver_ar") return std::make_shared<PerceiverARImpl>(cfg);
  throw Error("model.type " + cfg.type + " is not a language model (language models: " +
              join(language_model_types()) + ")");
}

}  // namespace longseq
