// Process-level setup and small utilities: threads, BLAS health, files, progress.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace longseq {

// Sets LibTorch's intra-op threads; 0 = the machine's core count (divided by LOCAL_WORLD_SIZE when torchrun's
// variables say that many processes share the machine).
int configure_threads(int threads);

struct BlasCheck {
  double gflops = 0;           // measured SGEMM rate, 512^3, all threads
  bool openblas_loaded = false;
  bool slow = false;           // far below what OpenBLAS gives on this many threads
  std::string message;         // a warning to print when slow
};
BlasCheck check_blas();

// The allocation policy in force, as the program reports it: glibc with huge
// pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1) or glibc's default.
std::string allocation_policy();

// OpenBLAS's choice of kernels ("core") and what longseq makes of it. OpenBLAS 0.3.21 (Debian 12) picks its
// kernels by CPU model, and a model newer than its release falls back to "Prescott", the SSE3 kernels: on an
// Emerald Rapids machine (model 207) SGEMM then runs at a fifth of the rate of its AVX-512 kernels.
struct BlasCore {
  std::string name;      // openblas_get_corename(); empty when OpenBLAS is not loaded
  std::string override;  // the core this CPU should use instead ("SkylakeX", "Haswell"); empty when none is needed
  bool user_set = false; // OPENBLAS_CORETYPE was set before longseq started: it is kept as it is
};
BlasCore blas_core();
// Sets OPENBLAS_CORETYPE (and, unless LONGSEQ_MALLOC=system, glibc's huge-page tunable) for this process's
// image and re-executes it once when either changed: both are read only as the libraries load. Returns only
// when nothing needed changing (or exec failed). `allocation`: whether to choose the allocation policy too.
void choose_process_environment(char** argv, bool allocation);
// "OpenBLAS core SkylakeX (set by longseq: OpenBLAS alone chose Prescott for this CPU)", for the reports.
std::string blas_core_report();

std::string read_file(const std::string& path);  // throws Error naming the path
// Write to a temp file beside `path`, fsync, rename over it, fsync the directory.
void write_file_atomic(const std::string& path, const std::string& data);
bool path_exists(const std::string& path);

// A one-line progress display on stderr; redraws in place on a terminal, else
// prints a line every `every` updates.
class Progress {
 public:
  Progress(std::string label, int64_t total);
  void update(int64_t done, const std::string& fields);
  void finish();

 private:
  std::string label_;
  int64_t total_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
  int64_t start_done_ = -1;
  double last_print_ = -1e9;
};

std::string format_duration(double seconds);

}  // namespace longseq
