// "dense" and "chunked": the position-wise feed-forward W2 act(W1 x) (Vaswani et al. 2017, sec. 3.3;
// FeedForwardImpl in layers.cpp), and the same computed over slices of the length so that the hidden activations
// of only one slice exist at a time (Kitaev et al. 2020, Reformer, sec. 3, eq. 10).
#include "longseq/ffn.h"
#include "longseq/layers.h"

namespace longseq {

namespace {

class ChunkedFeedForwardImpl : public FeedForwardImpl {
 public:
  ChunkedFeedForwardImpl(const FfnArgs& a)
      : FeedForwardImpl(a.d_model, a.d_ff, a.dropout, a.activation), chunks_(a.options["chunks"]) {}
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& padding_mask) override {
    return over_length_slices(x, chunks_, padding_mask, [&](const torch::Tensor& part, const torch::Tensor& pad) {
      return FeedForwardImpl::forward(part, pad);
    });
  }

 private:
  int64_t chunks_;
};

}  // namespace

FfnInfo dense_ffn_info() {
  FfnInfo f;
  f.name = "dense";
  f.summary = "position-wise feed-forward W2 act(W1 x), act = model.ff_activation";
  f.citation = "Vaswani et al. 2017, Attention Is All You Need, sec. 3.3";
  f.make = [](const FfnArgs& a) -> FeedForwardKind {
    return std::make_shared<FeedForwardImpl>(a.d_model, a.d_ff, a.dropout, a.activation);
  };
  return f;
}

FfnInfo chunked_ffn_info() {
  FfnInfo f;
  f.name = "chunked";
  f.summary = "the dense feed-forward over slices of the length: the hidden activations of one slice at a time";
  f.citation = "Kitaev, Kaiser, Levskaya 2020, Reformer: The Efficient Transformer, sec. 3, eq. 10";
  f.schema = {{"chunks", OptionType::Int, 4, "slices of the length computed one after another", 1, 1 << 20}};
  f.make = [](const FfnArgs& a) -> FeedForwardKind { return std::make_shared<ChunkedFeedForwardImpl>(a); };
  return f;
}

}  // namespace longseq
