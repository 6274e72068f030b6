// The CUDA path (issue 18): every registered mixer runs on a non-CPU device through its reference path and agrees
// with the CPU, forward and backward, padded and streamed, on CUDA when a GPU is present (skipped otherwise).
// Without a GPU, the parameter-free attention cores and the banded kernel run on LibTorch's lazy TorchScript device,
// where a tensor created on the CPU and mixed with the input aborts: hard-coded CPU creations are caught here too.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "longseq/kernels/banded_attention.h"
#include "longseq/registry.h"
#include "mixer_helpers.h"

#if __has_include(<torch/csrc/lazy/ts_backend/ts_backend_impl.h>)
#include <torch/csrc/lazy/ts_backend/ts_backend_impl.h>
#define LONGSEQ_TEST_LAZY 1  // the lazy device stands in for a GPU where LibTorch ships its TorchScript backend
#endif

using namespace longseq;

namespace cuda_test {

constexpr int64_t kC = 16, kH = 4, kB = 2;

struct Variant {
  std::string mixer;
  bool sparse = false;  // the mixer's declared sparse configuration instead of its defaults
};

void PrintTo(const Variant& v, std::ostream* os) { *os << v.mixer << (v.sparse ? " (sparse options)" : " (defaults)"); }

std::vector<Variant> variants() {
  std::vector<Variant> out;
  for (const auto& m : mixer_registry()) {
    out.push_back({m.name, false});
    if (!m.sparse_options.is_null()) out.push_back({m.name, true});
  }
  return out;
}

std::string variant_name(const ::testing::TestParamInfo<Variant>& p) {
  return p.param.mixer + (p.param.sparse ? "_sparse" : "_defaults");
}

// The variant built from one seed (so every device gets the same weights) on `device` in `dtype`, in eval mode.
Mixer build(const Variant& v, torch::Device device, torch::ScalarType dtype) {
  const auto& info = find_mixer(v.mixer);
  Json spec = v.sparse ? info.sparse_options : Json::object();
  spec["name"] = v.mixer;
  torch::manual_seed(7);
  auto m = make_mixer(parse_mixer_spec(spec, "test"), kC, kH, 0);
  m->to(device, dtype);
  m->eval();  // dropout off, rotations and hashes fixed by their seeds
  return m;
}

// Output of one forward and the gradients of sum(y * probe) with respect to x and every parameter, all on the CPU.
std::vector<torch::Tensor> forward_backward(const Mixer& m, const torch::Tensor& x, const torch::Tensor& pad,
                                            const torch::Tensor& probe, bool causal) {
  auto leaf = x.detach().clone().requires_grad_(true);
  m->zero_grad();
  auto y = longseq_test::run_mixer(m, leaf, causal, pad);
  if (y.device().type() != x.device().type())
    throw std::runtime_error("output on " + y.device().str() + ", input on " + x.device().str());
  (y * probe).sum().backward();
  auto gx = leaf.grad().defined() ? leaf.grad().cpu() : torch::zeros_like(x).cpu();  // an unused input: zero gradient
  std::vector<torch::Tensor> out = {y.detach().cpu(), gx};
  for (const auto& p : m->parameters()) out.push_back(p.grad().defined() ? p.grad().cpu() : torch::zeros_like(p).cpu());
  return out;
}

// Why `device` disagrees with the CPU on variant v (empty: it agrees). Double precision on both, so the tolerance
// measures the devices' rounding, not the fused float kernels'; every mode the mixer has, without and with padding,
// and streamed in chunks when the mixer streams.
std::string compare_with_cpu(const Variant& v, torch::Device device, double tol) {
  const auto& info = find_mixer(v.mixer);
  std::ostringstream why;
  auto cpu = build(v, torch::kCPU, torch::kDouble), dev = build(v, device, torch::kDouble);
  auto close = [&](const torch::Tensor& a, const torch::Tensor& b) {
    return a.sizes() == b.sizes() && torch::allclose(a, b, tol, tol);
  };
  for (int64_t T : {13, 16}) {
    torch::manual_seed(11 + T);
    auto x = torch::randn({kB, T, kC}, torch::kDouble);
    auto probe = torch::randn({kB, T, kC}, torch::kDouble);
    auto pad = longseq_test::right_padding(kB, T, 1, 4);
    std::vector<bool> modes;
    if (info.supports_bidirectional) modes.push_back(false);
    if (info.supports_causal) modes.push_back(true);
    for (bool causal : modes)
      for (bool padded : {false, true}) {
        const std::string where = " (T=" + std::to_string(T) + " causal=" + std::to_string(causal) +
                                  " padded=" + std::to_string(padded) + ")";
        std::vector<torch::Tensor> a, b;
        try {
          a = forward_backward(cpu, x, padded ? pad : torch::Tensor(), probe, causal);
          b = forward_backward(dev, x.to(device), padded ? pad.to(device) : torch::Tensor(), probe.to(device), causal);
        } catch (const std::exception& e) {
          why << "threw" << where << ": " << e.what() << "\n";
          continue;
        }
        if (!close(a[0], b[0]))
          why << "output differs" << where << " by " << (a[0] - b[0]).abs().max().item<double>() << "\n";
        if (!close(a[1], b[1])) why << "gradient of x differs" << where << "\n";
        for (size_t i = 2; i < a.size(); ++i)
          if (!close(a[i], b[i])) why << "gradient of parameter " << i - 2 << " differs" << where << "\n";
      }
    if (info.streams) {  // the state's caches and sums live on the input's device too
      torch::NoGradGuard ng;
      const std::vector<int64_t> lens = {5, 1, T - 6};
      try {
        auto a = longseq_test::stream_in_chunks(cpu, x, pad, lens);
        auto b = longseq_test::stream_in_chunks(dev, x.to(device), pad.to(device), lens).cpu();
        if (!close(a, b)) why << "streamed output differs (T=" << T << ")\n";
      } catch (const std::exception& e) {
        why << "streaming threw (T=" << T << "): " << e.what() << "\n";
      }
    }
  }
  // Float too (the dtype the fused CPU kernels take): runs there, same device and dtype out, finite.
  try {
    auto m = build(v, device, torch::kFloat);
    torch::manual_seed(5);
    auto x = torch::randn({kB, 13, kC}).to(device);
    auto y = longseq_test::run_mixer(m, x, info.supports_causal, longseq_test::right_padding(kB, 13, 1, 4).to(device));
    if (y.device() != x.device() || y.scalar_type() != torch::kFloat || !torch::isfinite(y).all().item<bool>())
      why << "float32 output on " << y.device() << " in " << y.scalar_type() << " or not finite\n";
  } catch (const std::exception& e) {
    why << "float32 threw: " << e.what() << "\n";
  }
  return why.str();
}

class CudaMixers : public ::testing::TestWithParam<Variant> {};

TEST_P(CudaMixers, MatchCpuForwardBackwardAndStreaming) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the GPU path is not tested here";
  EXPECT_EQ(compare_with_cpu(GetParam(), torch::Device(torch::kCUDA, 0), 1e-7), "");
}

INSTANTIATE_TEST_SUITE_P(Cuda, CudaMixers, ::testing::ValuesIn(variants()), variant_name);

#ifdef LONGSEQ_TEST_LAZY
// The attention core of variant v (make_core: no projections), or null when it has parameters or buffers: LibTorch
// cannot move a module to the lazy device (set_data refuses its tensor type), so only a core without any runs there.
Mixer lazy_core(const Variant& v) {
  const auto& info = find_mixer(v.mixer);
  if (!info.attends) return nullptr;
  Json spec = v.sparse ? info.sparse_options : Json::object();
  spec["name"] = v.mixer;
  torch::manual_seed(7);
  auto m = make_core(parse_mixer_spec(spec, "test"), kC, kH, 0, "test");
  m->to(torch::kDouble);
  m->eval();
  return m->parameters().empty() && m->buffers().empty() ? m : nullptr;
}

// Why the core's attend_qkv on `device` disagrees with the CPU (empty: it agrees): outputs and the gradients of q, k
// and v, in every mode, without and with padding.
std::string compare_core_with_cpu(const Variant& v, const Mixer& m, torch::Device device) {
  const auto& info = find_mixer(v.mixer);
  std::ostringstream why;
  const int64_t T = 13, D = kC / kH;
  torch::manual_seed(3);
  std::vector<torch::Tensor> qkv;
  for (int i = 0; i < 3; ++i) qkv.push_back(torch::randn({kB, kH, T, D}, torch::kDouble));
  auto probe = torch::randn({kB, kH, T, D}, torch::kDouble);
  auto pad = longseq_test::right_padding(kB, T, 1, 4);
  auto run = [&](torch::Device on, bool causal, bool padded) {
    std::vector<torch::Tensor> leaves;
    for (const auto& t : qkv) leaves.push_back(t.to(on).detach().requires_grad_(true));
    MixContext ctx;
    ctx.causal = causal;
    if (padded) ctx.padding_mask = pad.to(on);
    auto y = m->attend_qkv(leaves[0], leaves[1], leaves[2], ctx);
    if (y.device().type() != on.type()) throw std::runtime_error("output on " + y.device().str());
    (y * probe.to(on)).sum().backward();
    std::vector<torch::Tensor> out = {y.detach().cpu()};
    for (const auto& l : leaves)
      out.push_back(l.grad().defined() ? l.grad().cpu() : torch::zeros({kB, kH, T, D}, torch::kDouble));
    return out;
  };
  std::vector<bool> modes;
  if (info.supports_bidirectional) modes.push_back(false);
  if (info.supports_causal) modes.push_back(true);
  for (bool causal : modes)
    for (bool padded : {false, true}) {
      const std::string where = " (causal=" + std::to_string(causal) + " padded=" + std::to_string(padded) + ")";
      try {
        auto a = run(torch::kCPU, causal, padded), b = run(device, causal, padded);
        for (size_t i = 0; i < a.size(); ++i)
          if (!torch::allclose(a[i], b[i], 1e-9, 1e-9))
            why << (i == 0 ? "output" : "a gradient") << " differs" << where << "\n";
      } catch (const std::exception& e) {
        why << "threw" << where << ": " << e.what() << "\n";
      }
    }
  return why.str();
}

class CudaLazyDevice : public ::testing::TestWithParam<Variant> {};

// A CPU tensor mixed with a lazy one aborts the process (a fatal CHECK, not an exception), so each core runs in a
// child process of its own, which exits 0 when the lazy device agrees with the CPU.
TEST_P(CudaLazyDevice, AttentionCoreCreatesNoCpuTensor) {
  auto m = lazy_core(GetParam());
  if (!m) GTEST_SKIP() << "no attention core, or one with parameters or buffers (a module cannot move to lazy)";
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // re-executes the binary: no fork of a threaded process
  EXPECT_EXIT(
      {
        torch::lazy::InitTorchScriptBackend();
        const auto why = compare_core_with_cpu(GetParam(), m, torch::Device(torch::kLazy));
        std::fprintf(stderr, "%s", why.c_str());
        std::fflush(stderr);
        std::_Exit(why.empty() ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
}

INSTANTIATE_TEST_SUITE_P(Cuda, CudaLazyDevice, ::testing::ValuesIn(variants()), variant_name);

// Mismatches between the banded kernel on the lazy device and on the CPU (dilated, padded, both modes).
int banded_lazy_mismatches() {
  torch::lazy::InitTorchScriptBackend();
  torch::manual_seed(4);
  std::vector<torch::Tensor> qkv;
  for (int i = 0; i < 3; ++i) qkv.push_back(torch::randn({2, 2, 11, 4}, torch::kDouble));
  auto pad = longseq_test::right_padding(2, 11, 1, 3);
  const torch::Device lazy(torch::kLazy);
  int bad = 0;
  for (bool causal : {false, true}) {
    const BandSpec band{2, 2, causal};
    auto a = banded_attention(qkv[0], qkv[1], qkv[2], band, pad, "auto");
    auto b = banded_attention(qkv[0].to(lazy), qkv[1].to(lazy), qkv[2].to(lazy), band, pad.to(lazy), "auto");
    bad += !torch::allclose(a.out, b.out.cpu(), 1e-9, 1e-9) ||
           !torch::equal(torch::isinf(a.lse), torch::isinf(b.lse.cpu()));
  }
  return bad;
}

// The banded kernel builds its positions and permutation itself: on a non-CPU input it must build them there and
// fall back to the reference, agreeing with the CPU.
TEST(CudaLazyDevice, BandedAttentionCreatesNoCpuTensor) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // as above: a mixed-device op aborts
  EXPECT_EXIT(std::_Exit(banded_lazy_mismatches()), ::testing::ExitedWithCode(0), "");
}
#endif

}  // namespace cuda_test
