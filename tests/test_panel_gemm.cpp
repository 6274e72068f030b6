// The kernels' micro-kernels (src/kernels/cpu/panel_gemm.h) against torch::matmul, on the AVX2 blocks and, where
// the CPU has AVX-512, on the AVX-512 blocks: every row remainder, partial strips, transposes, alpha and beta.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <vector>

#include "../src/kernels/cpu/panel_gemm.h"
#include "../src/kernels/cpu/softmax_blocks.h"

namespace panel_gemm_test {

namespace g = longseq::cpu_gemm;

// Runs `body` once per instruction set this CPU has, restoring the process's choice after.
template <class F>
void on_each_isa(F body) {
  const bool was = g::avx512_in_use();
  for (bool wide : {false, true}) {
    if (wide && !g::avx512_available()) continue;
    g::use_avx512(wide);
    SCOPED_TRACE(wide ? "avx512" : "avx2");
    body();
  }
  g::use_avx512(was);
}

TEST(PanelGemm, MatchesMatmulForEveryShapeTransposeAndScale) {
  if (!g::available()) GTEST_SKIP() << "no AVX2 on this CPU: the kernels use the BLAS";
  torch::manual_seed(3);
  on_each_isa([] {
    for (int64_t m : {1, 5, 8, 13, 32}) {
      for (int64_t n : {16, 48, 64}) {
        for (int64_t k : {1, 7, 64}) {
          for (bool ta : {false, true}) {
            for (bool tb : {false, true}) {
              auto A = ta ? torch::randn({k, m}) : torch::randn({m, k});
              auto B = tb ? torch::randn({n, k}) : torch::randn({k, n});
              auto C = torch::randn({m, n});
              const float alpha = 0.5f, beta = tb ? 0.0f : 1.5f;
              auto want = alpha * torch::matmul(ta ? A.t() : A, tb ? B.t() : B) + beta * C;
              auto got = C.clone();
              g::gemm(ta, tb, m, n, k, alpha, A.data_ptr<float>(), ta ? m : k, B.data_ptr<float>(), tb ? k : n, beta,
                      got.data_ptr<float>(), n);
              ASSERT_TRUE(torch::allclose(got, want, 1e-4, 1e-4))
                  << "m " << m << " n " << n << " k " << k << " ta " << ta << " tb " << tb << " max err "
                  << (got - want).abs().max().item<float>();
            }
          }
        }
      }
    }
  });
}

TEST(PanelGemm, PanelsWriteOnlyTheirColumnsThroughARowMap) {
  if (!g::available()) GTEST_SKIP() << "no AVX2 on this CPU: the kernels use the BLAS";
  torch::manual_seed(4);
  on_each_isa([] {
    for (int64_t n : {1, 15, 17, 31, 33, 40}) {
      const int64_t m = 11, D = 64, ldc = 50;
      auto A = torch::randn({m, D}), X = torch::randn({n + 5, D});
      auto order = torch::randperm(n + 5).narrow(0, 0, n).contiguous();  // rows read through a map
      std::vector<float> pan(static_cast<size_t>(g::panel_floats(n, D)));
      g::pack_panels(X.data_ptr<float>(), n, D, D, pan.data(), order.data_ptr<int64_t>());
      auto C = torch::full({m, ldc}, 7.0f);
      g::gemm_panels(m, n, D, 2.0f, A.data_ptr<float>(), D, pan.data(), 0.0f, C.data_ptr<float>(), ldc);
      auto want = 2.0f * torch::matmul(A, X.index_select(0, order).t());
      EXPECT_TRUE(torch::allclose(C.narrow(1, 0, n), want, 1e-4, 1e-4)) << "n " << n;
      EXPECT_TRUE(C.narrow(1, n, ldc - n).eq(7.0f).all().item<bool>()) << "n " << n << ": columns past n written";
    }
  });
}

TEST(PanelGemm, ExponentialsAndMaximaMatchTheLibraryOnEachIsa) {
  const float inf = std::numeric_limits<float>::infinity();
  on_each_isa([&] {
    for (int64_t n : {3, 16, 37}) {
      for (float shift : {0.0f, 2.5f, inf}) {
        std::vector<float> x(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) x[i] = -90.0f + 5.3f * static_cast<float>(i % 19);  // below -87 (0) to 5.4
        x[1] = -inf;
        if (shift == inf) x[2] = inf;  // inf - inf: NaN, which counts as nothing visible
        const float want_max = *std::max_element(x.begin(), x.end());
        EXPECT_EQ(longseq::cpu_softmax::row_max(x.data(), n, -inf), want_max);
        std::vector<double> want(x.size());
        double want_sum = 0;
        for (int64_t i = 0; i < n; ++i) {
          const double d = static_cast<double>(x[i]) - static_cast<double>(shift);
          want[i] = d >= -87.0 ? std::exp(d) : 0.0;
          want_sum += want[i];
        }
        const float sum = longseq::cpu_softmax::exp_shifted(x.data(), n, shift);
        for (int64_t i = 0; i < n; ++i)
          EXPECT_NEAR(x[i], want[i], 1e-6 * want[i] + 1e-30) << "n " << n << " shift " << shift << " i " << i;
        EXPECT_NEAR(sum, want_sum, 1e-5 * want_sum + 1e-30);
      }
    }
  });
}

}  // namespace panel_gemm_test
