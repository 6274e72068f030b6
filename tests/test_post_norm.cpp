// The post_norm block kind (src/blocks/post_norm.cpp): LN(x + mixer(x)), then LN(. + FF(.)) as Vaswani et al. 2017,
// sec. 3.1 write it, checked against that composition built here from the layer's parts; streaming and refusals.
#include <gtest/gtest.h>

#include "helpers.h"
#include "longseq/blocks.h"
#include "longseq/common.h"
#include "longseq/models.h"

namespace post_norm_test {

using namespace longseq;

constexpr int64_t kC = 16;

TEST(PostNorm, IsLayerNormAfterEachResidualAdd) {
  torch::manual_seed(6);
  const MixerSpec mixer = parse_mixer_spec("full", "test");
  BlockArgs a;
  a.d_model = kC, a.n_heads = 2, a.d_ff = 24, a.mixer = &mixer;
  auto layer = make_layer(parse_block_spec("post_norm", "test"), a);
  layer->to(torch::kDouble);
  {
    torch::NoGradGuard ng;
    for (auto& p : layer->named_parameters())
      if (p.key().rfind("ln", 0) == 0) p.value().add_(0.3 * torch::randn_like(p.value()));  // not the identity
  }
  auto x = torch::randn({2, 9, kC}, torch::kDouble);
  MixContext ctx;
  ctx.causal = true;
  auto mix = std::dynamic_pointer_cast<MixerImpl>(layer->named_children()["mixer"]);
  ASSERT_TRUE(mix);
  auto P = [&](const std::string& n) { return longseq_test::param(*layer, n); };
  auto ln = [&](const torch::Tensor& z, const std::string& name) {
    auto mu = z.mean(-1, true);
    auto var = (z - mu).square().mean(-1, true);
    return (z - mu) / torch::sqrt(var + 1e-5) * P(name + ".weight") + P(name + ".bias");
  };
  MixContext ctx2 = ctx;
  auto y = ln(x + mix->forward(x, ctx2), "ln_mix");
  auto h = torch::gelu(torch::matmul(y, P("ff.w_in.weight").t()) + P("ff.w_in.bias"));
  auto want = ln(y + torch::matmul(h, P("ff.w_out.weight").t()) + P("ff.w_out.bias"), "ln_ff");
  EXPECT_LT((layer->forward(x, ctx) - want).abs().max().item<double>(), 1e-12);
  EXPECT_LT((layer->forward(x, ctx, 3) - want).abs().max().item<double>(), 1e-12) << "over slices of the length";
}

TEST(PostNorm, DecoderStreamsAndRefusesTheReversibleStack) {
  Json j = {{"vocab_size", 13}, {"d_model", kC}, {"n_heads", 2}, {"n_layers", 2}, {"d_ff", 24},
            {"block", "post_norm"}, {"mixer", "full"}};
  auto lm = make_language_model(ModelConfig::from_json(j));
  lm->eval();
  torch::NoGradGuard ng;
  auto tokens = torch::randint(0, 13, {2, 11});
  auto whole = lm->forward(tokens);
  auto st = lm->initial_state(2);
  auto parts = torch::cat({lm->forward(tokens.narrow(1, 0, 4), &st), lm->forward(tokens.narrow(1, 4, 7), &st)}, 1);
  EXPECT_LT((parts - whole).abs().max().item<double>(), 1e-4);
  j["reversible"] = true;
  try {
    ModelConfig::from_json(j);
    FAIL() << "post_norm cannot join the reversible stack";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot join model.reversible"), std::string::npos) << e.what();
  }
}

}  // namespace post_norm_test
