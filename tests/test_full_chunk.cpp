// The full mixer's `chunk` option (GSS-Hybrid's local attention over non-overlapping chunks): equal to softmax
// attention under the block-diagonal mask built here from the definition, on the fused and reference kernels;
// streaming in uneven pieces equal to the whole pass; chunk >= T equal to full attention.
#include <gtest/gtest.h>

#include "helpers.h"
#include "longseq/registry.h"

namespace full_chunk_test {

using namespace longseq;

constexpr int64_t kC = 16, kH = 2;

Mixer make(int64_t chunk, const std::string& kernel = "auto") {
  torch::manual_seed(2);
  return make_mixer(parse_mixer_spec(Json{{"name", "full"}, {"chunk", chunk}, {"kernel", kernel}}, "test"), kC, kH, 0);
}

torch::Tensor run(const Mixer& m, const torch::Tensor& x, bool causal, const torch::Tensor& pad = {},
                  MixerState* st = nullptr) {
  MixContext ctx;
  ctx.causal = causal;
  ctx.padding_mask = pad;
  ctx.state = st;
  return m->forward(x, ctx);
}

// Heads of the mixer's own projections, attention under allowed[t, s] = same chunk, (s <= t), s not padding.
torch::Tensor reference(const Mixer& m, const torch::Tensor& x, int64_t c, bool causal, const torch::Tensor& pad) {
  const int64_t B = x.size(0), T = x.size(1), D = kC / kH;
  auto P = [&](const char* n) { return longseq_test::param(*m, n).detach().to(torch::kDouble); };
  auto qkv = torch::matmul(x.to(torch::kDouble), P("qkv.weight").t()) + P("qkv.bias");
  auto heads = [&](int64_t i) { return qkv.narrow(-1, i * kC, kC).view({B, T, kH, D}).transpose(1, 2); };
  auto t = torch::arange(T);
  auto allowed = t.unsqueeze(1).div(c, "floor").eq(t.unsqueeze(0).div(c, "floor"));
  if (causal) allowed = allowed & t.unsqueeze(0).le(t.unsqueeze(1));
  auto a = allowed.view({1, 1, T, T}).expand({B, 1, T, T});
  if (pad.defined()) a = a & (~pad).view({B, 1, 1, T});
  auto y = longseq_test::dense_masked_attention(heads(0), heads(1), heads(2), a).transpose(1, 2).reshape({B, T, kC});
  return (torch::matmul(y, P("out.weight").t()) + P("out.bias")).to(x.dtype());
}

TEST(FullChunk, EqualsTheBlockDiagonalMask) {
  auto x = torch::randn({2, 13, kC});
  auto pad = torch::zeros({2, 13}, torch::kBool);
  pad[1].narrow(0, 10, 3).fill_(true);
  for (const std::string kernel : {"fused", "reference"})
    for (bool causal : {true, false})
      for (int64_t c : {1, 4, 5}) {
        auto m = make(c, kernel);
        EXPECT_LT((run(m, x, causal, pad) - reference(m, x, c, causal, pad)).abs().max().item<double>(), 1e-5)
            << kernel << " causal " << causal << " c " << c;
      }
}

TEST(FullChunk, ChunkAsLongAsTheSequenceIsFullAttention) {
  auto x = torch::randn({2, 11, kC});
  for (bool causal : {true, false})
    EXPECT_LT((run(make(11), x, causal) - run(make(0), x, causal)).abs().max().item<double>(), 1e-5);
}

TEST(FullChunk, StreamingInPiecesEqualsTheWholePass) {
  auto m = make(4);
  auto x = torch::randn({2, 15, kC});
  auto whole = run(m, x, true);
  auto st = m->initial_state(2);
  std::vector<torch::Tensor> parts;
  int64_t at = 0;
  for (int64_t n : {3, 1, 6, 5}) {  // pieces that cross chunk boundaries
    parts.push_back(run(m, x.narrow(1, at, n), true, {}, st.get()));
    at += n;
  }
  EXPECT_LT((torch::cat(parts, 1) - whole).abs().max().item<double>(), 1e-5);
}

}  // namespace full_chunk_test
