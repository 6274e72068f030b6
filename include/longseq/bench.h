// `longseq bench`: speed, memory and quality of mixers versus sequence length,
// measured in one run, beside this machine's SGEMM roof.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "longseq/schema.h"

namespace longseq {

struct BenchOptions {
  std::vector<std::string> mixers;   // empty = every registered mixer
  Json mixer_options = Json::object();  // {mixer: {option: value}}: non-default options of the mixers measured
  std::vector<int64_t> lengths;      // empty = 1K..64K doubling
  int64_t batch = 1, heads = 8, head_dim = 64;
  std::vector<std::string> modes = {"causal", "bidirectional"};
  std::vector<std::string> passes = {"fwd", "fwdbwd"};
  int repeats = 3;
  double time_cap = 120;        // seconds per configuration (child killed beyond)
  double memory_cap_gib = 16;   // resident memory per configuration (child killed beyond)
  double budget = 0;            // seconds for the whole run; 0 = none
  bool stock = false;           // add full/reference under glibc's default allocator
  bool kernels_only = false;    // only the attention cores, not whole mixers
  std::string csv, svg;  // output files; empty = not written (the tables go to stdout either way)
  std::vector<int64_t> stack_layers;  // also whole stacks of the first mixer at these depths, standard and reversible
  std::vector<int64_t> decode_contexts;  // also token-by-token decoding after a prefix of these lengths (streaming mixers)
  int64_t decode_tokens = 32;            // timed single-token steps per decoding row
  int quality_steps = 0;        // > 0: also train each mixer this many steps on the embedded corpus
  // > 0: instead, train each for this many seconds of training (equal compute): a short timed run measures its
  // step time, the schedule is fitted to the budget, the time limit enforces it; validation curves are drawn.
  double quality_time = 0;
  int64_t quality_seq_len = 0;  // > 0: quality runs train at this context, tokens per step kept (the batch scaled)
  std::string quality_svg;      // quality runs' validation curves (bits per byte against training time and steps)
  // Quality runs also train each mixer as long on the recall task with these gaps (bytes between a fact and its
  // question) and report the recalled digits' accuracy by gap; empty: no recall runs.
  std::vector<int64_t> quality_recall_gaps = {32, 256, 1536};
  // Whole language models (bench_model_names()): a training step (forward, loss, backward) at each length and,
  // with decode_contexts, decoding after each prefix. Width H * D, equal depth: perceiver_ar has `model_layers`
  // latent layers after its cross-attention, decoder_lm model_layers + 1 layers, universal_transformer(_act) one
  // block applied (at most) model_layers + 1 times. Given alone: no mixer rows. With quality_steps, each also
  // trains on the embedded corpus.
  std::vector<std::string> models;
  int64_t model_layers = 2;
  int64_t latents = 1024;       // perceiver_ar's N
  // Sparse experts against dense feed-forwards (issue 15): one feed-forward layer on [B, T, H * D], forward +
  // backward at each length, for moe with each of these expert counts (top-1, expert width 4 C) beside the dense
  // layer of equal active parameters (d_ff = 4 C) and of equal total parameters (d_ff = E 4 C). Alone: no mixer rows.
  std::vector<int64_t> ffn_experts;
  std::string self;             // path of the longseq program (children run `longseq bench-one`)
};

// The --models entries: the language-model types plus universal_transformer and universal_transformer_act, switch
// (every feed-forward 8 experts, top-1), and the Scaling Transformer's decoders scaling_sparse_ff (sparse feed-forwards) and scaling_sparse (also sparse QKV and
// the sparse loss layer).
std::vector<std::string> bench_model_names();
// A --models entry's row name and model section at the options' width and depth (see BenchOptions::models).
std::pair<std::string, Json> bench_model_section(const std::string& kind, const BenchOptions& o, int64_t max_len);

// Runs the benchmark; the markdown table goes to stdout, progress to stderr.
void run_bench(const BenchOptions& opts);

// The child side: one configuration (JSON spec) -> one JSON result line on stdout.
std::string bench_one(const Json& spec);

// The parent side: a child's standard output -> its result, the last line that is
// a JSON object (discarded when none is). A failure's error is cut to one line
// without quotes; a success without a positive median_s becomes a failure.
Json parse_bench_child_output(const std::string& out);
// The median; of an even count, the mean of the two middle values.
double median(std::vector<double> values);
// The process's own peak resident set: reset_peak_memory() sets it to the
// current resident set (/proc/self/clear_refs, "5"; false if refused);
// peak_memory_mib() reads it (VmHWM of /proc/self/status).
bool reset_peak_memory();
double peak_memory_mib();

struct RoofResult {
  double square_gflops = 0;  // 2048^3 SGEMM, all threads
  double block_gflops = 0;   // the fused kernel's block shape (128x512x64) via torch::mm, one per thread
};
RoofResult measure_roof();

}  // namespace longseq
