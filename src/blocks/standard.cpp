// "standard": the pre-norm residual pair x + mixer(LN(x)), then + FF(LN(.)) (BlockImpl, layers.h), around any
// registered mixer.
#include "longseq/blocks.h"

namespace longseq {

FeedForwardKind make_block_ffn(const BlockArgs& a) {
  if (!a.ff) return nullptr;
  FfnArgs f;
  f.d_model = a.d_model, f.d_ff = a.d_ff, f.dropout = a.dropout, f.activation = a.ff_activation;
  f.layer_index = a.layer_index;
  return make_ffn(*a.ff, f);
}

BlockInfo standard_block_info() {
  BlockInfo b;
  b.name = "standard";
  b.summary = "pre-norm residual block: the layer's mixer, then the feed-forward (Vaswani et al. 2017 with the "
              "pre-norm of Xiong et al. 2020)";
  b.citation = "Vaswani et al. 2017, Attention Is All You Need; Xiong et al. 2020, On Layer Normalization in the "
               "Transformer Architecture";
  b.uses_mixer = true;
  b.streams = true;  // when its mixer streams
  b.make = [](const BlockArgs& a) -> Layer {
    return Block(make_mixer(*a.mixer, a.d_model, a.n_heads, a.layer_index), a.d_model, a.d_ff, a.dropout,
                 a.ff_activation, make_block_ffn(a)).ptr();
  };
  return b;
}

}  // namespace longseq
