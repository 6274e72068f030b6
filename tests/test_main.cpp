#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "helpers.h"

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
  auto grad = torch::autograd::grad({out}, {input})[0].clone();
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

}  // namespace longseq_test

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  torch::set_num_threads(2);
  return RUN_ALL_TESTS();
}
