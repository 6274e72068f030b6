#include "longseq/runtime.h"

#include <torch/torch.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

namespace longseq {

std::string allocation_policy() {
  const char* tun = std::getenv("GLIBC_TUNABLES");
  return tun && std::string(tun).find("glibc.malloc.hugetlb=1") != std::string::npos ? "glibc + huge pages"
                                                                                      : "glibc default";
}

int configure_threads(int threads) {
  int n = threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
  torch::set_num_threads(n);
  return n;
}

BlasCheck check_blas() {
  BlasCheck r;
  {
    std::ifstream maps("/proc/self/maps");
    std::string line;
    while (std::getline(maps, line))
      if (line.find("openblas") != std::string::npos) { r.openblas_loaded = true; break; }
  }
  torch::NoGradGuard no_grad;
  const int64_t n = 512;
  auto a = torch::randn({n, n}), b = torch::randn({n, n});
  auto c = torch::matmul(a, b);  // warm-up
  const int reps = 8;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) c = torch::matmul(a, b);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.gflops = 2.0 * n * n * n * reps / s / 1e9;
  // OpenBLAS reaches tens of GFLOP/s per core on AVX2 machines; the reference
  // BLAS stays near 1-2. Below 4 per thread is the reference BLAS or worse.
  const double floor = 4.0 * torch::get_num_threads();
  r.slow = r.gflops < floor;
  if (r.slow) {
    std::ostringstream os;
    os << "warning: matrix products run at " << static_cast<int>(r.gflops) << " GFLOP/s on "
       << torch::get_num_threads() << " threads"
       << (r.openblas_loaded ? "" : " and OpenBLAS is not loaded")
       << "; LibTorch is probably using the reference BLAS (about 20x slower). "
       << "Install it with: apt-get install libopenblas0-openmp";
    r.message = os.str();
  }
  return r;
}

}  // namespace longseq
