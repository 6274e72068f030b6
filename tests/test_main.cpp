#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/runtime.h"

namespace longseq_test {

std::string scratch_dir(const std::string& name) {
  const char* base = std::getenv("LONGSEQ_TEST_TMP");
  std::filesystem::path p = std::filesystem::path(base ? base : "/tmp/longseq_test") / name;
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

std::string sample_text(size_t n) {
  static const char* words[] = {"the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and",
                                "a", "long", "sequence", "of", "tokens", "attends", "to", "itself"};
  std::string out;
  uint64_t s = 12345;
  while (out.size() < n) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    out += words[(s >> 33) % 17];
    out += ((s >> 20) % 9 == 0) ? ".\n" : " ";
  }
  return out.substr(0, n);
}

double gradcheck_error(const std::function<torch::Tensor()>& f, torch::Tensor input, double eps) {
  auto out = f();
  // An input the output does not use has gradient zero, which the differences must confirm.
  auto grad = torch::autograd::grad({out}, {input}, {}, /*retain_graph=*/c10::nullopt, /*create_graph=*/false,
                                    /*allow_unused=*/true)[0];
  grad = grad.defined() ? grad.clone() : torch::zeros_like(input);
  torch::NoGradGuard no_grad;
  auto flat = input.view({-1});
  auto g = grad.view({-1});
  double worst = 0;
  for (int64_t i = 0; i < flat.numel(); ++i) {
    const double orig = flat[i].item<double>();
    flat[i] = orig + eps;
    const double up = f().item<double>();
    flat[i] = orig - eps;
    const double down = f().item<double>();
    flat[i] = orig;
    worst = std::max(worst, std::abs((up - down) / (2 * eps) - g[i].item<double>()));
  }
  return worst;
}

torch::Tensor dense_masked_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                     const torch::Tensor& allowed) {
  auto s = torch::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(q.size(-1)));
  s = s.masked_fill(~allowed, -1e300);
  auto p = torch::softmax(s, -1) * allowed.any(-1, true).to(s.dtype());
  return torch::matmul(p, v);
}

torch::Tensor reversible_by_autograd(std::vector<longseq::Block>& blocks, const torch::Tensor& x,
                                     longseq::MixContext& ctx, int64_t ff_chunks) {
  torch::Tensor y1 = x, y2 = x;
  for (auto& b : blocks) {
    y1 = y1 + b->mix_branch(y2, ctx);
    y2 = y2 + b->ff_branch(y1, ff_chunks);
  }
  return (y1 + y2) / 2;
}

torch::Tensor param(const torch::nn::Module& m, const std::string& name) {
  auto params = m.named_parameters();  // find() points into this dictionary: keep it alive
  auto* p = params.find(name);
  EXPECT_TRUE(p) << "no parameter " << name;
  return p ? *p : torch::Tensor();
}

double max_output_and_grad_diff(const std::function<torch::Tensor()>& a, const std::function<torch::Tensor()>& b,
                                const std::vector<torch::Tensor>& wrt) {
  auto ya = a(), yb = b();
  if (ya.sizes() != yb.sizes()) return std::numeric_limits<double>::infinity();
  double worst = (ya - yb).abs().max().item<double>();
  auto w = torch::randn_like(ya);
  auto ga = torch::autograd::grad({(ya * w).sum()}, wrt, {}, c10::nullopt, false, true);
  auto gb = torch::autograd::grad({(yb * w).sum()}, wrt, {}, c10::nullopt, false, true);
  for (size_t i = 0; i < wrt.size(); ++i) {
    auto x = ga[i].defined() ? ga[i] : torch::zeros_like(wrt[i]);
    auto y = gb[i].defined() ? gb[i] : torch::zeros_like(wrt[i]);
    worst = std::max(worst, (x - y).abs().max().item<double>());
  }
  return worst;
}

std::map<int64_t, double> logged_losses(const std::string& run) {
  std::map<int64_t, double> out;
  std::istringstream in(longseq::read_file(run + "/metrics.jsonl"));
  std::string line;
  while (std::getline(in, line)) {
    auto j = longseq::Json::parse(line);
    if (j.contains("loss")) out[j["step"]] = j["loss"];
  }
  return out;
}

longseq::TrainOptions quiet(const std::string& dir, bool resume) {
  longseq::TrainOptions o;
  o.out_dir = dir;
  o.resume = resume;
  o.quiet = true;
  return o;
}

void child_trains(const std::string& run, const std::string& config, int64_t stop_after) {
  torch::set_num_threads(1);
  auto o = quiet(run, longseq::path_exists(run + "/config.json"));
  o.stop_after = stop_after;
  if (o.resume) {
    longseq::train_run(nullptr, o);
  } else {
    auto cfg = longseq::load_run_config(config);
    longseq::train_run(&cfg, o);
  }
}

longseq::TrainResult expect_exact_resume(const longseq::RunConfig& cfg, const std::string& dir, int64_t stop_after) {
  const int64_t steps = cfg.train["steps"];
  auto whole = longseq::train_run(&cfg, quiet(dir + "/whole"));
  auto opts = quiet(dir + "/killed");
  opts.stop_after = stop_after;
  longseq::train_run(&cfg, opts);
  auto resumed = longseq::train_run(nullptr, quiet(dir + "/killed", true));
  const int64_t every = cfg.train["checkpoint_every"];  // the resumed run starts at the last checkpoint
  EXPECT_EQ(static_cast<int64_t>(resumed.losses.size()), steps - stop_after / every * every);
  auto a = logged_losses(dir + "/whole"), b = logged_losses(dir + "/killed");
  EXPECT_EQ(static_cast<int64_t>(a.size()), steps);
  EXPECT_EQ(static_cast<int64_t>(b.size()), steps);
  for (const auto& kv : a)
    if (b.count(kv.first)) EXPECT_EQ(kv.second, b.at(kv.first)) << "step " << kv.first;
  EXPECT_EQ(longseq::read_file(dir + "/whole/model.safetensors"), longseq::read_file(dir + "/killed/model.safetensors"));
  return whole;
}

void expect_config_error(const longseq::Json& j, const std::string& needle) {
  try {
    longseq::RunConfig::from_json(j);
    ADD_FAILURE() << "no error; expected one containing \"" << needle << "\"";
  } catch (const longseq::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

void expect_config_errors(const longseq::Json& base, const std::vector<std::pair<longseq::Json, std::string>>& cases) {
  for (const auto& c : cases) {
    longseq::Json j = base;
    j.merge_patch(c.first);
    expect_config_error(j, c.second);
  }
}

}  // namespace longseq_test

int main(int argc, char** argv) {
  longseq::choose_process_environment(argv, false);  // OpenBLAS's kernels for this CPU (runtime.h), as the program
  ::testing::InitGoogleTest(&argc, argv);
  torch::set_num_threads(2);
  return RUN_ALL_TESTS();
}
