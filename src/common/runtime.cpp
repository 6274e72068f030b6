#include "longseq/runtime.h"

#include "longseq/common.h"

#include <torch/torch.h>

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
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

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// Vector width class of an OpenBLAS core name: 1 = SSE kernels, 2 = AVX without FMA, 0 = anything else (kept).
int core_class(const std::string& name) {
  static const char* sse[] = {"prescott", "core2",   "penryn",       "dunnington", "nehalem", "atom",  "katmai",
                              "coppermine", "northwood", "banias", "opteron", "opteron_sse3", "barcelona",
                              "bobcat",   "nano"};
  const std::string n = lower(name);
  for (const char* s : sse)
    if (n == s) return 1;
  return n == "sandybridge" ? 2 : 0;
}

// The OpenBLAS core for this CPU's vector units: SkylakeX with AVX-512 (F, CD, DQ, BW, VL), Haswell with
// AVX2 and FMA, none otherwise.
std::string core_for_cpu() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return "";
}

}  // namespace

BlasCore blas_core() {
  BlasCore r;
  using Corename = char* (*)();
  if (auto f = reinterpret_cast<Corename>(::dlsym(RTLD_DEFAULT, "openblas_get_corename"))) {
    const char* n = f();
    r.name = n ? n : "";
  }
  const char* set = std::getenv("OPENBLAS_CORETYPE");
  r.user_set = set != nullptr;
  if (r.name.empty() || r.user_set) return r;
  const int have = core_class(r.name);
  const std::string want = core_for_cpu();
  // Only a generic fallback is replaced: a core OpenBLAS chose for a CPU it knows is kept.
  if (have != 0 && !want.empty()) r.override = want;
  return r;
}

void choose_process_environment(char** argv, bool allocation) {
  bool changed = false;
  if (allocation) {
    const char* policy = std::getenv("LONGSEQ_MALLOC");
    if (policy && *policy && std::string(policy) != "system")
      throw Error(std::string("LONGSEQ_MALLOC must be system (glibc as it is) or unset (huge pages), got \"") +
                  policy + "\"");
    const char* tun = std::getenv("GLIBC_TUNABLES");
    std::string tunables = tun ? tun : "";
    if (!(policy && std::string(policy) == "system") && tunables.find("glibc.malloc.hugetlb") == std::string::npos) {
      tunables = tunables.empty() ? "glibc.malloc.hugetlb=1" : tunables + ":glibc.malloc.hugetlb=1";
      ::setenv("GLIBC_TUNABLES", tunables.c_str(), 1);
      changed = true;
    }
  }
  const BlasCore core = blas_core();
  if (!core.override.empty()) {
    ::setenv("OPENBLAS_CORETYPE", core.override.c_str(), 1);
    ::setenv("LONGSEQ_BLAS_FALLBACK", core.name.c_str(), 1);  // what OpenBLAS chose alone, for the reports
    changed = true;
  }
  if (changed) ::execv("/proc/self/exe", argv);  // returns only on failure: then run as we are
}

std::string blas_core_report() {
  const BlasCore core = blas_core();
  if (core.name.empty()) return "OpenBLAS not loaded";
  const char* fallback = std::getenv("LONGSEQ_BLAS_FALLBACK");
  std::string s = "OpenBLAS core " + core.name;
  if (fallback && *fallback && core.user_set)
    s += " (set by longseq: OpenBLAS alone chose " + std::string(fallback) + " for this CPU)";
  else if (core.user_set)
    s += " (OPENBLAS_CORETYPE)";
  return s;
}

int configure_threads(int threads) {
  int n = threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency());
  // torchrun's LOCAL_WORLD_SIZE processes share this machine's cores: each takes its share by default.
  const std::string local = std::getenv("LOCAL_WORLD_SIZE") ? std::getenv("LOCAL_WORLD_SIZE") : "";
  const int sharing = !local.empty() && local.size() < 6 && local.find_first_not_of("0123456789") == std::string::npos
                          ? std::stoi(local)
                          : 1;
  if (threads <= 0 && sharing > 1) n = std::max(1, n / sharing);
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
