// `longseq bench`. Each configuration runs in a fresh child process
// (`longseq bench-one`), so its peak memory is the child's own peak resident
// set (VmHWM, reset as bench-one starts), free of what earlier configurations
// and the parent left behind (wait4's ru_maxrss is not: Linux folds the
// parent's peak into it when a posix_spawn child execs); the parent
// kills a child over the time or memory cap and skips that series' longer
// lengths. Children inherit the parent's allocation policy unless a row asks
// for glibc's default, and the policy is printed with the results.
#include "longseq/bench.h"
#include "longseq/plot.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <thread>

#include "longseq/blocks.h"
#include "longseq/common.h"
#include "longseq/config.h"
#include "longseq/kernels/flash_attention.h"
#include "longseq/layers.h"
#include "longseq/registry.h"
#include "longseq/runtime.h"
#include "longseq/train.h"

extern char** environ;

namespace longseq {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

namespace {

// A field of /proc/self/status in kB ("VmHWM:", "VmRSS:"); -1 if absent.
long status_kib(const std::string& path, const char* field) {
  std::ifstream in(path);
  std::string line;
  const size_t len = std::strlen(field);
  while (std::getline(in, line))
    if (line.compare(0, len, field) == 0) return std::stol(line.substr(len));
  return -1;
}

}  // namespace

bool reset_peak_memory() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";  // 5: reset the peak resident set (VmHWM) to the current one (proc(5))
  out.flush();
  return static_cast<bool>(out);
}

double peak_memory_mib() { return status_kib("/proc/self/status", "VmHWM:") / 1024.0; }

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// What a --mixers entry names: a mixer, or a block kind that runs no mixer (gss, mega), timed as its whole layer.
struct Unit {
  bool block = false;
  bool supports_causal = true, supports_bidirectional = true, streams = false;
  std::vector<std::string> core_kernels;
};

// `options`: a mixer's --option values, which can change what it supports (sparse_qkv's core).
Unit find_unit(const std::string& name, const Json& options = Json::object()) {
  for (const auto& b : block_registry())
    if (b.name == name && !b.uses_mixer) return {true, b.supports_causal, b.supports_bidirectional, b.streams, {}};
  for (const auto& info : mixer_registry())
    if (info.name == name) {
      Json spec = options;
      spec["name"] = name;
      const auto m = mixer_properties(parse_mixer_spec(spec, "bench: --option " + name));
      return {false, m.supports_causal, m.supports_bidirectional, m.streams, info.core_kernels};
    }
  std::vector<std::string> names;
  for (const auto& m : mixer_registry()) names.push_back(m.name);
  for (const auto& b : block_registry())
    if (!b.uses_mixer) names.push_back(b.name);
  throw Error("bench: unknown mixer or block kind \"" + name + "\"; registered: " + join(names));
}

// A mixer wrapped as a layer, so that mixer rows and block rows run through one path.
class MixerLayerImpl : public LayerImpl {
 public:
  explicit MixerLayerImpl(Mixer m) : mixer_(register_module("mixer", std::move(m))) {}
  torch::Tensor forward(const torch::Tensor& x, MixContext& ctx, int64_t) override { return mixer_->forward(x, ctx); }
  std::unique_ptr<MixerState> initial_state(int64_t batch) const override { return mixer_->initial_state(batch); }

 private:
  Mixer mixer_;
};

// The spec {"name": s["mixer"], options...} of a row.
Json unit_spec(const Json& s) {
  Json spec = s.value("options", Json::object());
  spec["name"] = s["mixer"];
  return spec;
}

// The module a mixer row times: the mixer, or a block kind's whole layer (d_ff = 4 C where it has one).
Layer make_unit_layer(const Json& s, int64_t H, int64_t D) {
  if (!find_unit(s["mixer"]).block) return std::make_shared<MixerLayerImpl>(make_mixer(parse_mixer_spec(unit_spec(s), "bench"), H * D, H, 0));
  BlockArgs a;
  a.d_model = H * D, a.n_heads = H, a.d_ff = 4 * H * D;
  return make_layer(parse_block_spec(unit_spec(s), "bench"), a);
}

// A whole mixer's (or block's) useful FLOPs as its registry entry states them; 0 if it states none.
double mixer_flops(const Json& s) {
  const double passes = s["pass"] == "fwd" ? 1.0 : 3.0;
  if (find_unit(s["mixer"]).block) {
    const auto& b = find_block(s["mixer"]);
    if (!b.flops) return 0;
    return b.flops(s["B"], s["T"], s["D"].get<int64_t>() * s["H"].get<int64_t>(), s["causal"],
                   parse_block_spec(unit_spec(s), "bench").options) * passes;
  }
  const auto& info = find_mixer(s["mixer"]);
  if (!info.flops) return 0;
  Json spec = s["options"];
  spec["name"] = s["mixer"];
  FlopQuery q{s["B"], s["T"], s["D"].get<int64_t>() * s["H"].get<int64_t>(), s["H"], s["causal"],
              parse_mixer_spec(spec, "bench").options};
  return info.flops(q) * (s["pass"] == "fwd" ? 1.0 : 3.0);
}

// SGEMM of 1024^3 on all threads, GFLOP/s: the roof measured beside each row,
// in the row's own process, so a busy machine lowers both alike.
double local_roof() {
  torch::NoGradGuard ng;
  auto a = torch::randn({1024, 1024}), b = torch::randn({1024, 1024});
  torch::mm(a, b);
  std::vector<double> t;
  for (int i = 0; i < 5; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    torch::mm(a, b);
    t.push_back(seconds_since(t0));
  }
  return 2.0 * 1024.0 * 1024.0 * 1024.0 / median(t) / 1e9;
}

}  // namespace

RoofResult measure_roof() {
  torch::NoGradGuard ng;
  RoofResult r;
  auto a = torch::randn({2048, 2048}), b = torch::randn({2048, 2048});
  torch::matmul(a, b);
  std::vector<double> t;
  for (int i = 0; i < 3; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    torch::matmul(a, b);
    t.push_back(seconds_since(t0));
  }
  r.square_gflops = 2.0 * 2048.0 * 2048.0 * 2048.0 / median(t) / 1e9;
  // Skinny products of the fused kernel's block shape (128 queries x 512 keys x D 64),
  // one independent stream per thread; through torch::mm, so dispatch overhead included.
  const int threads = torch::get_num_threads();
  const int reps = 100;
  std::vector<torch::Tensor> qs, ks;
  for (int i = 0; i < threads; ++i) {
    qs.push_back(torch::randn({128, 64}));
    ks.push_back(torch::randn({512, 64}));
  }
  auto t0 = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      for (int r2 = 0; r2 < reps; ++r2) {
        auto s = torch::mm(qs[i], ks[i].t());
        (void)s;
      }
  });
  r.block_gflops = 2.0 * 128 * 512 * 64 * reps * threads / seconds_since(t0) / 1e9;
  return r;
}

namespace {

// Token-by-token decoding through a mixer's streaming state: the prefix of
// `context` tokens goes in by chunks, then `tokens` single-token steps are timed.
std::string bench_decode(const Json& s) {
  const int64_t B = s["B"], H = s["H"], D = s["D"], context = s["decode"]["context"], steps = s["decode"]["tokens"];
  torch::manual_seed(0);
  Layer mixer = make_unit_layer(s, H, D);
  mixer->eval();
  torch::NoGradGuard ng;
  auto state = mixer->initial_state(B);
  if (!state) throw Error(s["mixer"].get<std::string>() + " does not stream: no decoding to time");
  // Inputs are drawn before each timer starts: only the mixer's step is timed.
  auto step = [&](int64_t offset, const torch::Tensor& x) {
    MixContext ctx;
    ctx.causal = true;
    ctx.offset = offset;
    ctx.state = state.get();
    auto t0 = std::chrono::steady_clock::now();
    mixer->forward(x, ctx);
    return seconds_since(t0);
  };
  double prefill = 0;
  for (int64_t at = 0; at < context; at += 4096)
    prefill += step(at, torch::randn({B, std::min<int64_t>(4096, context - at), H * D}));
  std::vector<double> roofs = {local_roof()};
  auto xs = torch::randn({steps + 1, B, 1, H * D});
  step(context, xs[0]);  // warm-up
  std::vector<double> times;  // seconds per single-token step
  for (int64_t i = 0; i < steps; ++i) times.push_back(step(context + 1 + i, xs[i + 1]));
  roofs.push_back(local_roof());
  return Json{{"ok", true}, {"times", times}, {"median_s", median(times)}, {"prefill_s", prefill},
              {"roofs", roofs}, {"roof_gflops", median(roofs)}, {"peak_mib", peak_memory_mib()}}
      .dump();
}

}  // namespace

std::vector<std::string> bench_model_names() {
  auto names = language_model_types();
  names.push_back("universal_transformer");
  names.push_back("universal_transformer_act");
  names.push_back("switch");
  names.push_back("scaling_sparse_ff");
  names.push_back("scaling_sparse");
  return names;
}

// The row name and model section of a --models entry at the bench's width; every entry has the same depth:
// decoder_lm L + 1 layers, perceiver_ar a cross-attention and L latent layers, the Universal Transformer one
// block applied L + 1 times (with _act: at most L + 1, halting per position).
std::pair<std::string, Json> bench_model_section(const std::string& kind, const BenchOptions& o, int64_t max_len) {
  const int64_t depth = o.model_layers + 1;
  Json lm = {{"type", kind}, {"d_model", o.heads * o.head_dim}, {"n_heads", o.heads}, {"n_layers", depth},
             {"max_len", max_len}, {"positions", "sinusoidal"}};
  if (kind == "perceiver_ar") {
    lm["n_layers"] = o.model_layers, lm["latents"] = o.latents, lm["positions"] = "rotary";
    return {kind + " (N=" + std::to_string(o.latents) + ", 1 + " + std::to_string(o.model_layers) + " layers)", lm};
  }
  if (kind == "universal_transformer" || kind == "universal_transformer_act") {
    lm["type"] = "decoder_lm", lm["n_layers"] = 1, lm["recurrence_steps"] = depth;
    if (kind == "universal_transformer_act") lm["act"] = true;
    return {kind + " (1 block, " + (kind == "universal_transformer" ? "" : "at most ") + std::to_string(depth) +
                " steps)",
            lm};
  }
  if (kind == "switch") {  // Fedus et al. 2022: every feed-forward 8 experts, top-1 (equal active parameters)
    lm["type"] = "decoder_lm";
    lm["ff"] = {{"name", "moe"}, {"experts", 8}};
    return {kind + " (" + std::to_string(depth) + " layers, moe E=8 top-1)", lm};
  }
  if (kind == "scaling_sparse_ff" || kind == "scaling_sparse") {  // Jaszczur et al. 2021: the decoder, sparse layers
    lm["type"] = "decoder_lm";
    lm["ff"] = {{"name", "sparse_ff"}, {"block", 64}};
    if (kind == "scaling_sparse_ff") return {kind + " (" + std::to_string(depth) + " layers, sparse FF N=64)", lm};
    lm["mixer"] = "sparse_qkv";
    lm["output_modules"] = 4;
    return {kind + " (" + std::to_string(depth) + " layers, sparse FF N=64, sparse QKV, sparse loss S=4)", lm};
  }
  return {kind + " (" + std::to_string(depth) + " layers)", lm};
}

namespace {

// A whole language model (spec "lm": the model section): a training step on drawn tokens, or decoding after a
// prefix fed in chunks of 4096, timed over enough single-token steps to include Perceiver AR's refill pass.
std::string bench_model(const Json& s) {
  const int64_t B = s["B"], T = s["T"];
  torch::manual_seed(0);
  LanguageModel model = make_language_model(ModelConfig::from_json(s["lm"]));
  std::vector<double> roofs = {local_roof()}, times;
  const int64_t V = model->config().vocab_size;
  if (s["pass"] == "decode") {
    model->eval();
    torch::NoGradGuard ng;
    ModelState state = model->initial_state(B);
    auto t0 = std::chrono::steady_clock::now();
    for (int64_t at = 0; at < T; at += 4096) model->forward(torch::randint(V, {B, std::min<int64_t>(4096, T - at)}), &state);
    const double prefill = seconds_since(t0);
    const int64_t steps = std::max<int64_t>(s["decode"]["tokens"].get<int64_t>(), model->decode_period() + 1);
    auto xs = torch::randint(V, {steps, B, 1});
    for (int64_t i = 0; i < steps; ++i) {
      auto t1 = std::chrono::steady_clock::now();
      model->forward(xs[i], &state);
      times.push_back(seconds_since(t1));
    }
    roofs.push_back(local_roof());
    double total = 0;
    for (double t : times) total += t;
    return Json{{"ok", true}, {"times", Json::array()}, {"median_s", total / static_cast<double>(steps)},
                {"step_median_s", median(times)}, {"steps", steps}, {"prefill_s", prefill}, {"roofs", roofs},
                {"roof_gflops", median(roofs)}, {"peak_mib", peak_memory_mib()}}
        .dump();
  }
  model->train();
  auto tokens = torch::randint(V, {B, T + 1});
  auto once = [&]() {
    auto t0 = std::chrono::steady_clock::now();
    auto logits = model->forward(tokens.narrow(1, 0, T));
    auto target = tokens.narrow(1, T + 1 - logits.size(1), logits.size(1));
    auto loss = torch::nn::functional::cross_entropy(logits.reshape({-1, V}), target.reshape({-1}));
    if (model->aux_loss().defined()) loss = loss + model->aux_loss();
    loss.backward();
    for (auto& p : model->parameters()) p.mutable_grad() = torch::Tensor();
    return seconds_since(t0);
  };
  const double warm = once();
  const int n = warm > 10 ? 1 : s["repeats"].get<int>();
  for (int i = 0; i < n; ++i) {
    times.push_back(once());
    roofs.push_back(local_roof());
  }
  return Json{{"ok", true},       {"times", times},       {"median_s", median(times)}, {"warmup_s", warm},
              {"roofs", roofs},   {"roof_gflops", median(roofs)}, {"peak_mib", peak_memory_mib()},
              {"scored", model->scored_positions(T)}}
      .dump();
}

// One feed-forward layer (spec "ffn": its kind, "d_ff"): forward + backward on [B, T, C], the layer in training mode.
std::string bench_ffn(const Json& s) {
  const int64_t B = s["B"], T = s["T"], C = s["C"];
  torch::manual_seed(0);
  FfnArgs a;
  a.d_model = C, a.d_ff = s["d_ff"];
  auto ff = make_ffn(parse_ffn_spec(s["ffn"], "bench"), a);
  ff->train();
  auto x = torch::randn({B, T, C}).requires_grad_(true);
  auto once = [&]() {
    auto t0 = std::chrono::steady_clock::now();
    auto y = ff->forward(x);
    auto loss = (y * y).mean();
    for (const auto& kv : ff->aux_losses()) loss = loss + kv.second;
    loss.backward();
    x.mutable_grad() = torch::Tensor();
    for (auto& p : ff->parameters()) p.mutable_grad() = torch::Tensor();
    ff->clear_aux();
    return seconds_since(t0);
  };
  std::vector<double> roofs = {local_roof()}, times;
  const double warm = once();
  for (int i = 0; i < (warm > 10 ? 1 : s["repeats"].get<int>()); ++i) {
    times.push_back(once());
    roofs.push_back(local_roof());
  }
  return Json{{"ok", true}, {"times", times}, {"median_s", median(times)}, {"warmup_s", warm}, {"roofs", roofs},
              {"roof_gflops", median(roofs)}, {"peak_mib", peak_memory_mib()}}
      .dump();
}

}  // namespace

std::string bench_one(const Json& s) {
  reset_peak_memory();  // first: the peak from here on is this configuration's (plus what is resident now)
  if (s.contains("lm")) return bench_model(s);
  if (s.contains("ffn")) return bench_ffn(s);
  const int64_t B = s["B"], H = s["H"], D = s["D"], T = s["T"];
  const bool causal = s["causal"], backward = s["pass"] == "fwdbwd";
  const int repeats = s["repeats"];
  torch::manual_seed(0);
  std::function<torch::Tensor(const torch::Tensor&)> run;
  std::vector<torch::Tensor> inputs;
  Layer mixer;
  Trunk trunk{nullptr};
  CoreRun core;
  if (s.contains("decode")) return bench_decode(s);
  if (s.contains("stack")) {  // a whole trunk: tokens -> embeddings -> blocks -> final norm
    Json mj = {{"d_model", H * D}, {"n_heads", H}, {"n_layers", s["stack"]["layers"]},
               {"reversible", s["stack"]["reversible"]}, {"ff_chunks", 4}};
    mj[find_unit(s["mixer"]).block ? "block" : "mixer"] = s["mixer"];
    trunk = Trunk(ModelConfig::from_json(mj));
    inputs.push_back(torch::randint(0, 256, {B, T}));
    run = [&](const torch::Tensor& tokens) { return trunk->forward(tokens, causal, {}); };
  } else if (s["core"].get<bool>()) {  // the mechanism's attention core alone, on inputs it draws
    const auto& info = find_mixer(s["mixer"]);
    if (!info.core) throw Error("bench: mixer " + info.name + " has no attention core apart from the mixer");
    Json spec = s.value("options", Json::object());
    spec["name"] = s["mixer"];
    core = info.core(CoreQuery{B, H, T, D, causal, parse_mixer_spec(spec, "bench").options, s["kernel"]});
    for (auto& x : core.inputs) x.requires_grad_(backward);
    inputs = core.inputs;
    run = [&](const torch::Tensor&) { return core.run(); };
  } else {
    mixer = make_unit_layer(s, H, D);
    inputs.push_back(torch::randn({B, T, H * D}).requires_grad_(backward));
    run = [&](const torch::Tensor& x) {
      MixContext ctx;
      ctx.causal = causal;
      return mixer->forward(x, ctx);
    };
  }
  auto once = [&]() {
    auto t0 = std::chrono::steady_clock::now();
    if (backward) {
      auto y = run(inputs[0]);
      y.backward(torch::ones_like(y));
      for (auto& x : inputs) x.mutable_grad() = torch::Tensor();
      if (mixer) for (auto& p : mixer->parameters()) p.mutable_grad() = torch::Tensor();
      if (trunk) for (auto& p : trunk->parameters()) p.mutable_grad() = torch::Tensor();
    } else {
      torch::NoGradGuard ng;
      run(inputs[0]);
    }
    return seconds_since(t0);
  };
  std::vector<double> roofs = {local_roof()};
  const double warm = once();
  std::vector<double> times;
  const int n = warm > 10 ? 1 : repeats;  // long configurations: one timed repeat
  for (int i = 0; i < n; ++i) {
    times.push_back(once());
    roofs.push_back(local_roof());
  }
  return Json{{"ok", true},          {"times", times},          {"median_s", median(times)},
              {"warmup_s", warm},    {"roofs", roofs},          {"roof_gflops", median(roofs)},
              {"peak_mib", peak_memory_mib()}, {"core_flops", core.flops}}
      .dump();
}

namespace {

struct Row {
  std::string series;  // e.g. "full (fused)"
  std::string mode, pass, policy;
  int64_t T = 0;
  std::string status;  // ok | over time cap | over memory cap | error: ... | skipped
  double median_s = 0, tokens_per_s = 0, peak_mib = 0, gflops = 0, roof_gflops = 0, roof_fraction = 0;
  double best_fraction = 0;  // the fastest timed repeat's share of the roof: less exposed to a busy neighbour
};

struct ChildResult {
  std::string out;
  int status = 0;
  double peak_mib = 0;
  std::string killed;  // why the parent stopped it
};

long rss_kib(pid_t pid) { return std::max(0L, status_kib("/proc/" + std::to_string(pid) + "/status", "VmRSS:")); }

// `tick` is called with the seconds elapsed while the child runs (progress display).
ChildResult run_child(const std::string& self, const Json& spec, bool system_malloc, double time_cap,
                      double mem_cap_gib, const std::function<void(double)>& tick = {}) {
  int fds[2];
  if (pipe(fds) != 0) throw Error("bench: cannot create a pipe");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  std::vector<std::string> env_store;
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    if (system_malloc && (kv.rfind("GLIBC_TUNABLES=", 0) == 0 || kv.rfind("LONGSEQ_MALLOC=", 0) == 0)) continue;
    env_store.push_back(kv);
  }
  if (system_malloc) env_store.push_back("LONGSEQ_MALLOC=system");
  std::vector<char*> envp;
  for (auto& kv : env_store) envp.push_back(&kv[0]);
  envp.push_back(nullptr);
  std::string spec_text = spec.dump(), threads = std::to_string(torch::get_num_threads());
  std::vector<std::string> args = {self, "--threads", threads, "bench-one", "--spec", spec_text};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(&a[0]);
  argv.push_back(nullptr);
  pid_t pid;
  if (posix_spawn(&pid, self.c_str(), &fa, nullptr, argv.data(), envp.data()) != 0)
    throw Error("bench: cannot start " + self);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  ChildResult r;
  auto t0 = std::chrono::steady_clock::now();
  int status = 0;
  long sampled_kib = 0;  // the child's highest resident set seen by polling
  while (true) {
    pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    const long rss = rss_kib(pid);
    sampled_kib = std::max(sampled_kib, rss);
    if (r.killed.empty()) {
      if (seconds_since(t0) > time_cap) r.killed = "over time cap";
      else if (rss / 1048576.0 > mem_cap_gib) r.killed = "over memory cap";
      if (!r.killed.empty()) kill(pid, SIGKILL);
    }
    if (tick) tick(seconds_since(t0));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0) r.out.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  r.status = status;
  r.peak_mib = sampled_kib / 1024.0;  // replaced by the child's own VmHWM when it reports one
  return r;
}

std::string fmt(double v, int prec) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", prec, v);
  return b;
}

// One panel per (pass, mode) for time and one for memory; a colour per mechanism, a dash per variant (the part of
// the series name in parentheses, and the allocator policy), an x at the top where a length was not measured.
void write_svg(const std::string& path, const std::vector<Row>& rows) {
  std::vector<std::pair<std::string, std::string>> cells;  // (pass, mode) in order of appearance
  for (const auto& r : rows)
    if (std::find(cells.begin(), cells.end(), std::make_pair(r.pass, r.mode)) == cells.end())
      cells.push_back({r.pass, r.mode});
  double roof = 0;
  for (const auto& r : rows) roof = std::max(roof, r.roof_gflops);
  std::vector<PlotPanel> panels;
  for (int memory = 0; memory < 2; ++memory)
    for (const auto& cell : cells) {
      PlotPanel p;
      p.title = (memory ? "peak memory, " : "time per call, ") + cell.first + ", " + cell.second;
      p.x_label = "sequence length T";
      p.y_label = memory ? "peak resident MiB" : "seconds";
      p.log_x = p.log_y = true;
      std::map<std::string, size_t> index;
      for (const auto& r : rows) {
        if (r.pass != cell.first || r.mode != cell.second) continue;
        const std::string name = r.series + (r.policy == "glibc default" ? " (glibc default)" : "");
        if (!index.count(name)) {
          index[name] = p.series.size();
          PlotSeries s;
          s.label = name;
          const auto space = r.series.find(' ');  // "full core (fused)": mechanism "full", variant "core (fused)"
          s.group = r.series.substr(0, space);
          s.kind = (space == std::string::npos ? std::string() : r.series.substr(space + 1)) +
                   (r.policy == "glibc default" ? " glibc" : "");
          p.series.push_back(s);
        }
        PlotSeries& s = p.series[index[name]];
        if (std::find(p.x_ticks.begin(), p.x_ticks.end(), static_cast<double>(r.T)) == p.x_ticks.end())
          p.x_ticks.push_back(static_cast<double>(r.T));  // ticks at the lengths measured
        if (r.status == "ok") s.points.push_back({static_cast<double>(r.T), memory ? r.peak_mib : r.median_s});
        else if (r.status != "skipped") s.unmeasured.push_back({static_cast<double>(r.T), r.status});
      }
      std::sort(p.x_ticks.begin(), p.x_ticks.end());
      panels.push_back(p);
    }
  write_file_atomic(path, svg_figure("longseq bench: SGEMM roof " + fmt(roof, 0) + " GFLOP/s on this machine, " +
                                         std::to_string(rows.size()) + " configurations of one run",
                                     panels, static_cast<int>(std::max<size_t>(cells.size(), 1))));
}

}  // namespace

Json parse_bench_child_output(const std::string& out) {
  // The result is the last line that is a JSON object: a library may print other lines first.
  size_t end = out.size();
  while (end > 0) {
    const size_t begin = out.rfind('\n', end - 1);
    const size_t from = begin == std::string::npos ? 0 : begin + 1;
    const std::string line = out.substr(from, end - from);
    end = begin == std::string::npos ? 0 : begin;
    const size_t brace = line.find_first_not_of(" \t\r");
    if (brace == std::string::npos || line[brace] != '{') continue;
    Json res;
    try {
      res = parse_json(line, "bench child");
    } catch (const Error&) {
      continue;
    }
    if (!res.is_object()) continue;
    if (res.value("ok", Json(false)) == Json(true)) {
      const Json m = res.value("median_s", Json());
      if (!m.is_number() || !(m.get<double>() > 0) || !std::isfinite(m.get<double>()))
        return Json{{"ok", false}, {"error", "the result line lacks a positive median_s"}};
      return res;
    }
    if (!res.contains("error")) return Json{{"ok", false}};
    // One line of text without quotes, so the table and the CSV keep their shape.
    std::string why = res["error"].is_string() ? res["error"].get<std::string>() : json_excerpt(res["error"]);
    why = why.substr(0, why.find('\n'));
    std::replace(why.begin(), why.end(), '"', '\'');
    std::replace(why.begin(), why.end(), '\r', ' ');
    return Json{{"ok", false}, {"error", why}};
  }
  return Json(Json::value_t::discarded);
}

namespace {

// Every bench argument is checked before any work, so a bad one never costs a run.
void check_bench_options(const BenchOptions& o) {
  auto positive = [](const std::vector<int64_t>& v, const char* flag, int64_t most) {
    for (auto x : v)
      if (x < 1 || x > most)
        throw Error(std::string("bench: ") + flag + " holds " + std::to_string(x) + "; each must be in [1, " +
                    std::to_string(most) + "]");
  };
  positive(o.lengths, "--lengths", int64_t{1} << 30);
  positive(o.decode_contexts, "--decode-contexts", int64_t{1} << 30);
  positive(o.stack_layers, "--stack-layers", 1024);
  positive(o.ffn_experts, "--ffn-experts", 4096);
  positive({o.batch}, "--batch", int64_t{1} << 20);
  positive({o.heads}, "--heads", 1024);
  positive({o.head_dim}, "--head-dim", 65536);
  positive({o.decode_tokens}, "--decode-tokens", 1000000000);
  positive({o.repeats}, "--repeats", 1000000);
  if (o.quality_steps < 0) throw Error("bench: --quality-steps must be >= 0, got " + std::to_string(o.quality_steps));
  if (o.quality_steps > 0 && o.quality_time > 0)
    throw Error("bench: give --quality-steps (equal steps) or --quality-time (equal training time), not both");
  if (!o.quality_svg.empty() && o.quality_time <= 0)
    throw Error("bench: --quality-svg draws the curves of --quality-time runs; give --quality-time");
  if (!(o.time_cap > 0 && std::isfinite(o.time_cap)))
    throw Error("bench: --time-cap must be a positive number of seconds, got " + std::to_string(o.time_cap));
  if (!(o.memory_cap_gib > 0 && std::isfinite(o.memory_cap_gib)))
    throw Error("bench: --memory-cap must be a positive number of GiB, got " + std::to_string(o.memory_cap_gib));
  if (!(o.budget >= 0 && std::isfinite(o.budget)))
    throw Error("bench: --budget must be >= 0 seconds, got " + std::to_string(o.budget));
  for (const auto& m : o.modes)
    if (m != "causal" && m != "bidirectional") throw Error("bench: --modes takes causal, bidirectional; got " + m);
  for (const auto& p : o.passes)
    if (p != "fwd" && p != "fwdbwd") throw Error("bench: --passes takes fwd, fwdbwd; got " + p);
  for (const auto& m : o.mixers) find_unit(m);  // unknown names fail listing the registered ones
  const auto lms = bench_model_names();
  for (const auto& m : o.models)
    if (std::find(lms.begin(), lms.end(), m) == lms.end())
      throw Error("bench: --models holds \"" + m + "\", not a language model; the models the bench knows: " + join(lms));
  positive({o.model_layers}, "--model-layers", 1024);
  positive({o.latents}, "--latents", int64_t{1} << 24);
  for (const auto& kv : o.mixer_options.items()) {  // each mixer's options pass its schema
    Json spec = kv.value();
    spec["name"] = kv.key();
    if (find_unit(kv.key()).block) parse_block_spec(spec, "bench: --option " + kv.key());
    else parse_mixer_spec(spec, "bench: --option " + kv.key());
  }
  for (const std::string* out : {&o.csv, &o.svg}) {  // files asked for must have somewhere to go
    if (out->empty()) continue;
    const auto dir = std::filesystem::path(*out).parent_path();
    std::error_code ec;
    if (!dir.empty() && !std::filesystem::is_directory(dir, ec))
      throw Error("bench: cannot write " + *out + ": no such directory");
  }
}

// The row of `series` at the same mode, pass and length as `r` (and allocation policy, unless given), or null.
const Row* same_config(const std::vector<Row>& rows, const Row& r, const std::string& series,
                       const std::string* policy = nullptr) {
  for (const auto& x : rows)
    if (x.series == series && x.mode == r.mode && x.pass == r.pass && x.T == r.T && x.status == "ok" &&
        x.policy == (policy ? *policy : r.policy))
      return &x;
  return nullptr;
}

std::string ratio(const Row* num, const Row& den) { return num ? fmt(num->median_s / den.median_s, 2) : "-"; }

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// Ratios between series of this run: each fused core against its reference path and against exact
// attention's fused core, and each whole mixer against the whole `full` mixer.
void print_ratio_tables(const std::vector<Row>& rows, const std::string& policy) {
  const std::string stock_policy = "glibc default";
  std::printf("\n| core | mode | pass | T | reference / fused time | exact fused core / this core time | "
              "peak / exact fused core's | stock (glibc default) reference / fused time |\n"
              "|---|---|---|---|---|---|---|---|\n");
  for (const auto& f : rows) {
    if (!ends_with(f.series, " core (fused)") || f.status != "ok" || f.policy != policy) continue;
    const std::string mech = f.series.substr(0, f.series.size() - std::string(" core (fused)").size());
    const Row* ref = same_config(rows, f, mech + " core (reference)");
    const Row* stock = policy == stock_policy ? nullptr : same_config(rows, f, mech + " core (reference)", &stock_policy);
    const Row* exact = same_config(rows, f, "full core (fused)");
    std::printf("| %s | %s | %s | %lld | %s | %s | %s | %s |\n", mech.c_str(), f.mode.c_str(), f.pass.c_str(),
                static_cast<long long>(f.T), ratio(ref, f).c_str(), ratio(exact, f).c_str(),
                exact && exact->peak_mib > 0 ? fmt(f.peak_mib / exact->peak_mib, 2).c_str() : "-",
                ratio(stock, f).c_str());
  }
  std::printf("\n| mixer | mode | pass | T | full mixer / this mixer time | peak / full mixer's |\n"
              "|---|---|---|---|---|---|\n");
  for (const auto& m : rows) {
    if (!ends_with(m.series, " mixer") || m.series == "full mixer" || m.status != "ok") continue;
    const Row* full = same_config(rows, m, "full mixer");
    if (!full) continue;
    std::printf("| %s | %s | %s | %lld | %s | %s |\n", m.series.c_str(), m.mode.c_str(), m.pass.c_str(),
                static_cast<long long>(m.T), ratio(full, m).c_str(),
                full->peak_mib > 0 ? fmt(m.peak_mib / full->peak_mib, 2).c_str() : "-");
  }
}

}  // namespace

void run_bench(const BenchOptions& o) {
  check_bench_options(o);
  const auto start = std::chrono::steady_clock::now();
  std::vector<int64_t> lengths = o.lengths;
  if (lengths.empty())
    for (int64_t t = 1024; t <= 65536; t *= 2) lengths.push_back(t);
  std::vector<std::string> mixers = o.mixers;
  if (mixers.empty() && o.models.empty() && o.ffn_experts.empty())
    for (const auto& m : mixer_registry()) mixers.push_back(m.name);
  for (const auto& m : mixers) find_unit(m);  // unknown names fail before any work

  const std::string policy = allocation_policy();
  auto roof = measure_roof();
  std::printf("# longseq bench\n\nthreads: %d; allocation policy: %s (every row, unless it says otherwise); %s\n",
              torch::get_num_threads(), policy.c_str(), blas_core_report().c_str());
  for (const auto& kv : o.mixer_options.items())
    std::printf("options of %s: %s (its defaults otherwise)\n", kv.key().c_str(), kv.value().dump().c_str());
  std::printf("SGEMM roof: %.1f GFLOP/s (2048^3, all threads); block products 128x512x64 via torch::mm: %.1f GFLOP/s (one per thread)\n",
              roof.square_gflops, roof.block_gflops);
  std::printf("peak memory: the peak resident set (VmHWM) of a fresh child process per configuration, program and "
              "libraries included, reset as it starts its configuration; for a child stopped by a cap, the highest "
              "resident set sampled every 20 ms\n");

  // The series: each mechanism's attention core per kernel it offers, and the whole mixers.
  struct Series {
    std::string name, mixer, kernel;
    bool core;
    bool system_malloc;
    int64_t stack_layers = 0;  // > 0: a whole trunk of this many blocks of `mixer`
    bool reversible = false;
  };
  std::vector<Series> all;
  for (const auto& m : mixers) {
    for (const auto& k : find_unit(m).core_kernels) {
      all.push_back({m + " core (" + k + ")", m, k, true, false});
      if (o.stock && k == "reference") all.push_back({m + " core (" + k + ")", m, k, true, true});
    }
    if (!o.kernels_only) all.push_back({m + (find_unit(m).block ? " block" : " mixer"), m, "", false, false});
  }
  // Activation memory of a stack versus its depth, with stored activations and reversible (Reformer sec. 3).
  for (int64_t n : mixers.empty() ? std::vector<int64_t>{} : o.stack_layers)
    for (bool rev : {false, true})
      all.push_back({mixers.front() + " stack of " + std::to_string(n) + (rev ? " reversible" : " standard"),
                     mixers.front(), "", false, false, n, rev});
  // Baseline: the program and libraries before any tensor work.
  Json base_spec = {{"B", 1}, {"H", 1}, {"D", 1}, {"T", 1}, {"causal", false}, {"pass", "fwd"}, {"repeats", 1},
                    {"core", true}, {"kernel", "reference"}, {"mixer", "full"}};
  auto base = run_child(o.self, base_spec, false, 60, 1e9);
  {
    Json res = Json::parse(base.out.empty() ? "{}" : base.out.substr(base.out.find('{')), nullptr, false);
    if (!res.is_discarded() && res.contains("peak_mib")) base.peak_mib = res["peak_mib"];
  }
  std::printf("baseline peak resident set: %.0f MiB\n\n", base.peak_mib);

  std::vector<Row> rows;
  // Feed-forward rows: moe with E experts, dense of equal active parameters, dense of equal total parameters.
  struct FfnSeries {
    std::string name;
    Json ffn;
    int64_t d_ff;
  };
  std::vector<FfnSeries> ffns;
  const int64_t C = o.heads * o.head_dim;
  // Parameters: dense W1, b1, W2, b2; moe the router and E bias-free experts.
  auto dense_params = [&](int64_t F) { return std::to_string(2 * C * F + F + C); };
  if (!o.ffn_experts.empty())
    ffns.push_back({"dense d_ff=4C (" + dense_params(4 * C) + " params)", "dense", 4 * C});
  for (int64_t E : o.ffn_experts) {
    ffns.push_back({"moe E=" + std::to_string(E) + " top-1 (" + std::to_string(C * E + E * 2 * C * 4 * C) + " params)",
                    {{"name", "moe"}, {"experts", E}}, 4 * C});
    if (E > 1)
      ffns.push_back({"dense d_ff=" + std::to_string(E) + "x4C (" + dense_params(E * 4 * C) + " params)", "dense",
                      E * 4 * C});
  }
  size_t total = all.size() * o.modes.size() * o.passes.size() * lengths.size() +
                 o.models.size() * (lengths.size() + o.decode_contexts.size()) + ffns.size() * lengths.size(),
         done = 0;
  Progress progress("bench", static_cast<int64_t>(total));
  for (const auto& s : all)
    for (const auto& mode : o.modes)
      for (const auto& pass : o.passes) {
        const Unit info = find_unit(s.mixer, o.mixer_options.value(s.mixer, Json::object()));
        bool skip_rest = false;
        std::string skip_why;
        for (int64_t T : lengths) {
          Row r;
          r.series = s.name, r.mode = mode, r.pass = pass, r.T = T;
          r.policy = s.system_malloc ? "glibc default" : policy;
          ++done;
          if ((mode == "causal" && !info.supports_causal) || (mode == "bidirectional" && !info.supports_bidirectional)) {
            continue;
          }
          if (skip_rest) {
            r.status = "skipped (" + skip_why + " at a shorter length)";
            rows.push_back(r);
            continue;
          }
          if (o.budget > 0 && seconds_since(start) > o.budget) {
            r.status = "skipped (time budget)";
            rows.push_back(r);
            continue;
          }
          Json spec = {{"B", o.batch}, {"H", o.heads}, {"D", o.head_dim}, {"T", T}, {"causal", mode == "causal"},
                       {"pass", pass}, {"repeats", o.repeats}, {"core", s.core}, {"kernel", s.kernel},
                       {"mixer", s.mixer}, {"options", o.mixer_options.value(s.mixer, Json::object())}};
          if (s.stack_layers > 0) spec["stack"] = {{"layers", s.stack_layers}, {"reversible", s.reversible}};
          const std::string label = s.name + " " + mode + " " + pass + " T=" + std::to_string(T);
          auto c = run_child(o.self, spec, s.system_malloc, o.time_cap, o.memory_cap_gib, [&](double secs) {
            progress.update(static_cast<int64_t>(done - 1), label + " (" + format_duration(secs) + ")");
          });
          r.peak_mib = c.peak_mib;
          Json res = parse_bench_child_output(c.out);
          if (!c.killed.empty()) {
            r.status = c.killed;
            skip_rest = true, skip_why = c.killed;
          } else if (res.is_discarded() || !res.value("ok", false)) {
            r.status = "failed (exit " + std::to_string(WIFEXITED(c.status) ? WEXITSTATUS(c.status) : -1) + ")";
            if (!res.is_discarded() && res.contains("error")) r.status = "error: " + res["error"].get<std::string>();
            skip_rest = true, skip_why = "failure";
          } else {
            r.status = "ok";
            r.peak_mib = res.value("peak_mib", r.peak_mib);
            r.median_s = res["median_s"];
            r.tokens_per_s = o.batch * T / r.median_s;
            const double core_flops = res.value("core_flops", 0.0) * (pass == "fwd" ? 1.0 : 3.0);
            const double flops = s.stack_layers > 0 ? 0.0 : s.core ? core_flops : mixer_flops(spec);
            r.gflops = flops / r.median_s / 1e9;
            r.roof_gflops = res.value("roof_gflops", 0.0);
            if (r.roof_gflops > 0) r.roof_fraction = r.gflops / r.roof_gflops;
            double best = r.median_s;
            for (const auto& t : res.value("times", Json::array())) best = std::min(best, t.get<double>());
            if (r.roof_gflops > 0 && best > 0) r.best_fraction = flops / best / 1e9 / r.roof_gflops;
          }
          rows.push_back(r);
        }
      }
  // A decode or model row from its child: status, peak memory, time and the row's roof; false unless it ran.
  auto read_child = [](Row& r, const ChildResult& c) {
    r.peak_mib = c.peak_mib;
    Json res = parse_bench_child_output(c.out);
    if (!c.killed.empty()) {
      r.status = c.killed;
    } else if (res.is_discarded() || !res.value("ok", false)) {
      r.status = !res.is_discarded() && res.contains("error") ? "error: " + res["error"].get<std::string>() : "failed";
    } else {
      r.status = "ok";
      r.peak_mib = res.value("peak_mib", r.peak_mib);
      r.median_s = res["median_s"];
      r.roof_gflops = res.value("roof_gflops", 0.0);
      return std::make_pair(true, res);
    }
    return std::make_pair(false, res);
  };
  // Token-by-token decoding after prefixes of several lengths: flat tokens/s means O(1) state per token.
  for (const auto& m : mixers) {
    if (o.decode_contexts.empty() || !find_unit(m, o.mixer_options.value(m, Json::object())).streams) continue;
    for (int64_t context : o.decode_contexts) {
      Row r;
      r.series = m + " decode", r.mode = "causal", r.pass = "decode", r.T = context, r.policy = policy;
      Json spec = {{"B", o.batch}, {"H", o.heads}, {"D", o.head_dim}, {"T", context}, {"causal", true},
                   {"pass", "decode"}, {"repeats", 1}, {"core", false}, {"kernel", ""}, {"mixer", m},
                   {"options", o.mixer_options.value(m, Json::object())},
                   {"decode", {{"context", context}, {"tokens", o.decode_tokens}}}};
      const std::string label = m + " decode after " + std::to_string(context);
      auto c = run_child(o.self, spec, false, o.time_cap, o.memory_cap_gib,
                         [&](double secs) { progress.update(static_cast<int64_t>(done), label + " (" + format_duration(secs) + ")"); });
      if (read_child(r, c).first) r.tokens_per_s = o.batch / r.median_s;
      rows.push_back(r);
    }
  }
  // Whole language models: a training step versus T, and decoding after each prefix.
  int64_t longest = 1;
  for (int64_t T : lengths) longest = std::max(longest, T);
  for (int64_t T : o.decode_contexts) longest = std::max(longest, T + 4096);
  for (const auto& kind : o.models) {
    const auto [name, lm] = bench_model_section(kind, o, longest);
    for (const std::string pass : {"train", "decode"}) {
      const auto& Ts = pass == "train" ? lengths : o.decode_contexts;
      bool skip_rest = false;
      for (int64_t T : Ts) {
        Row r;
        r.series = name, r.mode = "causal", r.pass = pass, r.T = T, r.policy = policy;
        if (skip_rest) {
          r.status = "skipped (over a cap at a shorter length)";
          rows.push_back(r);
          continue;
        }
        Json spec = {{"B", o.batch}, {"T", T}, {"pass", pass}, {"repeats", o.repeats}, {"lm", lm},
                     {"decode", {{"tokens", o.decode_tokens}}}};
        ++done;
        const std::string label = name + " " + pass + " T=" + std::to_string(T);
        auto c = run_child(o.self, spec, false, o.time_cap, o.memory_cap_gib, [&](double secs) {
          progress.update(static_cast<int64_t>(done - 1), label + " (" + format_duration(secs) + ")");
        });
        const auto [ok, res] = read_child(r, c);
        skip_rest = !ok;
        // Training: targets trained on per second (Perceiver AR: its latents); decoding: new tokens per second.
        if (ok) r.tokens_per_s = pass == "train" ? o.batch * res.value("scored", T) / r.median_s : o.batch / r.median_s;
        rows.push_back(r);
      }
    }
  }
  for (const auto& f : ffns) {
    bool skip_rest = false;
    for (int64_t T : lengths) {
      Row r;
      r.series = f.name, r.mode = "causal", r.pass = "fwdbwd", r.T = T, r.policy = policy;
      ++done;
      if (skip_rest) {
        r.status = "skipped (over a cap at a shorter length)";
        rows.push_back(r);
        continue;
      }
      Json spec = {{"B", o.batch}, {"T", T}, {"C", C}, {"repeats", o.repeats}, {"ffn", f.ffn}, {"d_ff", f.d_ff}};
      const std::string label = f.name + " T=" + std::to_string(T);
      auto c = run_child(o.self, spec, false, o.time_cap, o.memory_cap_gib, [&](double secs) {
        progress.update(static_cast<int64_t>(done - 1), label + " (" + format_duration(secs) + ")");
      });
      const bool ok = read_child(r, c).first;
      skip_rest = !ok;
      if (ok) r.tokens_per_s = o.batch * T / r.median_s;
      rows.push_back(r);
    }
  }
  progress.update(static_cast<int64_t>(total), "done");
  progress.finish();

  std::printf("| series | mode | pass | T | policy | status | time (s) | tokens/s | peak MiB | GFLOP/s | row's roof | of roof "
              "| fastest repeat, of roof |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::ostringstream csv;
  csv << "series,mode,pass,T,policy,status,time_s,tokens_per_s,peak_mib,gflops,roof_gflops,roof_fraction,"
         "best_roof_fraction\n";
  for (const auto& r : rows) {
    const bool ok = r.status == "ok", rated = ok && r.gflops > 0;
    std::printf("| %s | %s | %s | %lld | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.series.c_str(), r.mode.c_str(),
                r.pass.c_str(), static_cast<long long>(r.T), r.policy.c_str(), r.status.c_str(),
                ok ? fmt(r.median_s, 4).c_str() : "", ok ? fmt(r.tokens_per_s, 0).c_str() : "",
                r.peak_mib > 0 ? fmt(r.peak_mib, 0).c_str() : "", rated ? fmt(r.gflops, 1).c_str() : "",
                ok ? fmt(r.roof_gflops, 0).c_str() : "", rated ? (fmt(100 * r.roof_fraction, 1) + "%").c_str() : "",
                rated && r.best_fraction > 0 ? (fmt(100 * r.best_fraction, 1) + "%").c_str() : "");
    csv << r.series << "," << r.mode << "," << r.pass << "," << r.T << "," << r.policy << ",\"" << r.status << "\","
        << (ok ? fmt(r.median_s, 6) : "") << "," << (ok ? fmt(r.tokens_per_s, 1) : "") << "," << fmt(r.peak_mib, 1)
        << "," << (rated ? fmt(r.gflops, 2) : "") << "," << (ok ? fmt(r.roof_gflops, 1) : "") << ","
        << (rated ? fmt(r.roof_fraction, 4) : "") << "," << (rated && r.best_fraction > 0 ? fmt(r.best_fraction, 4) : "")
        << "\n";
  }
  std::printf("\ntime (s): the median of the timed repeats (one call, forward or forward + backward, after a "
              "warm-up); decode rows: T is the prefix length and time is the median of the single-token steps (batch "
              "B) after the prefix went in by chunks of 4096, inputs drawn outside the timing. tokens/s: B * T / time "
              "(decode rows: B / time).\n");
  if (!o.models.empty())
    std::printf("model rows (longseq bench --models): train = one training step (forward, cross-entropy on the "
                "positions the model scores, backward) on B x T drawn tokens, tokens/s = targets trained on per "
                "second (perceiver_ar: B x N latents of T context tokens); decode = after a prefix of T tokens fed "
                "by chunks of 4096, the mean time per new token over at least one refill cycle of perceiver_ar "
                "(latents - reset_latents + 1 steps), tokens/s = B / time.\n");
  std::printf("row's roof: SGEMM 1024^3 on all threads, measured in the row's own process before the warm-up and "
              "after each timed repeat (median); \"of roof\" divides by it. GFLOP/s counts each mixer's useful FLOPs "
              "as its registry entry states them (x3 for fwd+bwd). \"fastest repeat, of roof\": the same for the fastest "
              "timed repeat; on a shared machine a neighbour's load slows single repeats by up to 2x, so read both.\n");
  print_ratio_tables(rows, policy);
  if (!o.csv.empty()) write_file_atomic(o.csv, csv.str()), std::printf("\nwrote %s\n", o.csv.c_str());
  if (!o.svg.empty()) write_svg(o.svg, rows), std::printf("wrote %s\n", o.svg.c_str());

  if (o.quality_steps > 0 || o.quality_time > 0) {
    const bool timed = o.quality_time > 0;
    if (timed)
      std::printf("\n## Quality at equal compute: %.0f s of training each on the embedded corpus (default config "
                  "otherwise%s)\n\n", o.quality_time,
                  o.quality_seq_len > 0 ? (", context " + std::to_string(o.quality_seq_len)).c_str() : "");
    else
      std::printf("\n## Quality: %d training steps each on the embedded corpus (default config otherwise)\n\n",
                  o.quality_steps);
    std::printf("| mixer or model | valid bits per byte | steps | training s | wall time (s) | training tokens/s |\n"
                "|---|---|---|---|---|---|\n");
    std::vector<std::pair<std::string, std::string>> eval_methods;  // row, how it was validated
    std::vector<PlotSeries> curves_t, curves_s;                     // validation bpb against training s and steps
    std::vector<int64_t> gaps;
    for (int64_t g : o.quality_recall_gaps)
      if (g > 0) gaps.push_back(g);
    std::vector<std::pair<std::string, std::vector<GroupResult>>> recall_rows;  // mixer, accuracy by gap
    // One training run in a temporary directory; `steps` optimizer steps, `limit` seconds of training at most (0: no
    // limit), validations every `every` steps on `batches` batches (0: the whole split) and at the end on the whole.
    auto run_quality = [&](Json raw, int64_t steps, double limit, int64_t every, int64_t batches, bool keep_curve,
                           const std::string& label) {
      raw["train"]["steps"] = steps;
      // The warm-up must end before the last step (the config's rule): short runs warm up for a tenth.
      if (raw["train"].value("warmup", int64_t{0}) >= steps) raw["train"]["warmup"] = steps / 10;
      raw["train"]["eval_every"] = every;
      raw["train"]["eval_batches"] = batches;
      raw["train"]["time_limit"] = limit;
      raw["train"]["checkpoint_every"] = steps;
      raw["train"]["log_every"] = std::max<int64_t>(1, std::min<int64_t>(10, every > 0 ? every : steps));
      RunConfig cfg = RunConfig::from_json(raw);
      char tmpl[] = "/tmp/longseq_quality_XXXXXX";
      if (!mkdtemp(tmpl)) throw Error("bench: cannot create a temporary run directory");
      TrainOptions topts;
      topts.out_dir = std::string(tmpl) + "/run";
      topts.quiet = true;
      auto t0 = std::chrono::steady_clock::now();
      auto res = train_run(&cfg, topts);
      const double wall = seconds_since(t0);
      const bool recall_task = raw["data"].value("corpus", std::string()) == "recall";
      if (recall_task || batches > 0) {  // measured again on the whole split: the recalled digits by gap, or the bpb
        auto run = load_run(topts.out_dir);
        const auto corpus = tokenize_corpus(read_corpus(run.config.data), *run.tokenizer);
        const auto& valid = corpus.split("valid");
        const int64_t T = run.config.train["seq_len"], B = run.config.train["batch_size"];
        if (recall_task) {
          // Windows T / 8 apart: every scored digit sees at least 7/8 of the context, so a fact up to that far back
          // is in view (non-overlapping windows would cut most long episodes in two).
          auto r = evaluate_lm(*run.model, valid, B, T, 0, std::max<int64_t>(1, T / 8), recall_positions(valid.tokens),
                               recall_distances(valid.tokens, gaps));
          recall_rows.push_back({label, r.groups});
        } else {
          res.valid = evaluate_lm(*run.model, valid, B, T, 0, 0);
        }
      }
      // Training seconds from the run's own rate (its steps' tokens over tokens per second, validation excluded).
      const double tokens_per_step = static_cast<double>(raw["train"]["batch_size"].get<int64_t>()) *
                                     raw["train"].value("accum", int64_t{1}) * raw["train"]["seq_len"].get<int64_t>();
      const double train_s = res.tokens_per_s > 0 ? res.last_step * tokens_per_step / res.tokens_per_s : 0.0;
      // Validation points at the training time of their step (the last logged at or before it); the step time
      // after the first logged step (the first carries allocation and warm-up).
      PlotSeries by_time{label, label, "validation", {}, {}}, by_step = by_time;
      std::ifstream metrics(topts.out_dir + "/metrics.jsonl");
      std::string line;
      int64_t step_at = 0, first_step = -1;
      double logged_s = 0, first_s = 0;
      while (std::getline(metrics, line)) {
        const Json j = Json::parse(line, nullptr, false);
        if (!j.is_object()) continue;
        if (j.contains("train_s")) {
          logged_s = j["train_s"].get<double>(), step_at = j.value("step", step_at);
          if (first_step < 0) first_step = step_at, first_s = logged_s;
        }
        if (j.contains("valid_bpb") && j.value("step", int64_t{-1}) >= step_at) {
          by_time.points.push_back({logged_s, j["valid_bpb"].get<double>()});
          by_step.points.push_back({j["step"].get<double>(), j["valid_bpb"].get<double>()});
        }
      }
      if (keep_curve) curves_t.push_back(by_time), curves_s.push_back(by_step);
      const double steady_step_s = step_at > first_step && first_step >= 0
                                       ? (logged_s - first_s) / static_cast<double>(step_at - first_step)
                                       : 0.0;
      std::filesystem::remove_all(tmpl);
      return std::make_tuple(res, wall, train_s, steady_step_s);
    };
    auto train_one = [&](const std::string& label, Json raw) {
      if (o.quality_seq_len > 0) {  // the same tokens per step at another context (the recall run's too)
        const int64_t T0 = raw["train"]["seq_len"], B0 = raw["train"]["batch_size"];
        raw["train"]["seq_len"] = o.quality_seq_len;
        raw["train"]["batch_size"] = std::max<int64_t>(1, B0 * T0 / o.quality_seq_len);
        if (raw["model"].value("positions", std::string()) == "learned")
          raw["model"]["max_len"] = std::max<int64_t>(raw["model"].value("max_len", int64_t{0}), o.quality_seq_len);
      }
      int64_t steps = o.quality_steps, every = 0;
      if (timed) {
        // A short run measures the step time (compilation, allocator and corpus reading outside the rate), then the
        // cosine schedule is fitted to the budget; the time limit stops a run that turns out slower.
        auto [probe, probe_wall, probe_s, probe_step_s] = run_quality(raw, 8, 0, 0, 1, false, label);
        (void)probe_wall, (void)probe_s;
        const double step_s = probe_step_s > 0 ? probe_step_s : probe.last_step > 0 ? probe_s / probe.last_step
                                                                                   : o.quality_time;
        steps = std::max<int64_t>(10, static_cast<int64_t>(0.97 * o.quality_time / step_s));
        every = std::max<int64_t>(1, steps / 8);  // eight points of each curve
      }
      // Timed: the curves' validations on a prefix of 16 batches, the reported number on the whole split after.
      auto [res, wall, train_s, step_s] = run_quality(raw, steps, timed ? o.quality_time : 0, every, timed ? 16 : 0,
                                                      timed, label);
      (void)step_s;
      // The run's own rate: training steps only, not reading the corpus, validating or saving.
      eval_methods.push_back({label, res.valid.method()});
      std::printf("| %s | %.4f | %lld | %.1f | %.1f | %.0f |\n", label.c_str(), res.valid.bpb,
                  static_cast<long long>(res.last_step), train_s, wall, res.tokens_per_s);
      std::fflush(stdout);
      if (gaps.empty()) return;
      // The same model and budget on the recall task (the steps the prose run took, its time limit too).
      Json recall = raw;
      recall["data"] = {{"corpus", "recall"}, {"recall_gaps", gaps}, {"tokenizer", "byte"}};
      run_quality(recall, res.last_step, timed ? o.quality_time : 0, 0, 0, false, label);
    };
    for (const auto& m : mixers) {
      if (!find_unit(m, o.mixer_options.value(m, Json::object())).supports_causal) {  // the default is a causal LM
        std::printf("| %s | (bidirectional only: not in the causal LM) | | |\n", m.c_str());
        continue;
      }
      Json raw = parse_json_text(default_config_text(), "default config");
      Json mixer = o.mixer_options.value(m, Json::object());
      mixer["name"] = m;
      raw["model"][find_unit(m).block ? "block" : "mixer"] = mixer;  // a block kind replaces every layer
      if (!find_unit(m).block) raw["model"]["block"] = "standard";  // a mixer runs in standard blocks, whatever the default
      train_one(m, raw);
    }
    // Models at the default config's width and depth (one block applied as often, for the Universal Transformer).
    for (const auto& kind : o.models) {
      Json raw = parse_json_text(default_config_text(), "default config");
      BenchOptions q = o;
      const int64_t C = raw["model"]["d_model"], H = raw["model"]["n_heads"], L = raw["model"]["n_layers"];
      q.heads = H, q.head_dim = C / H, q.model_layers = L - 1;
      auto [label, lm] = bench_model_section(kind, q, raw["train"]["seq_len"].get<int64_t>());
      raw["model"]["block"] = "standard";  // the model kinds run their mixers in standard blocks
      raw["model"].update(lm);
      if (kind == "perceiver_ar")
        raw["model"]["latents"] = std::min<int64_t>(o.latents, raw["train"]["seq_len"].get<int64_t>());
      train_one(label, raw);
    }
    // Each validation named once; rows validated otherwise than the first say how.
    for (size_t i = 0; i < eval_methods.size(); ++i)
      if (i == 0 || eval_methods[i].second != eval_methods[0].second)
        std::printf("\nvalidation%s: %s.", i == 0 ? "" : (" of " + eval_methods[i].first).c_str(),
                    eval_methods[i].second.c_str());
    if (!recall_rows.empty()) {
      std::printf("\n### Recall by distance: accuracy of the recalled digits (chance 0.1), the same model and steps "
                  "trained on the recall task (a fact \"#kkkk=dddd;\", filler of the gap's bytes, the question "
                  "\"?kkkk=\")\n\n| mixer or model |");
      for (int64_t g : gaps) std::printf(" gap %lld |", static_cast<long long>(g));
      std::printf("\n|---|");
      for (size_t i = 0; i < gaps.size(); ++i) std::printf("---|");
      std::printf("\n");
      for (const auto& [label, groups] : recall_rows) {
        std::printf("| %s |", label.c_str());
        for (int64_t g : gaps) {
          auto it = std::find_if(groups.begin(), groups.end(), [&](const GroupResult& r) { return r.label == g; });
          if (it == groups.end()) std::printf(" - |");
          else std::printf(" %.3f |", it->accuracy);
        }
        std::printf("\n");
      }
    }
    std::printf("\nwall time: the whole run (reading and tokenizing the corpus, training, the final validation and "
                "checkpoint); training s: the training steps' time as the run logged it; training tokens/s: the run's "
                "rate over its training steps (targets trained on: perceiver_ar's latents).%s\n",
                timed ? " Steps: fitted to the budget from the step time of an 8-step timed run of the same configuration (its first step, with allocation and warm-up, left out); the curves' validations "
                        "(every eighth of the steps, outside the training time) on the split's first 16 batches, "
                        "the table's on the whole split." : "");
    if (!o.quality_svg.empty()) {
      if (!timed) throw Error("bench: --quality-svg draws the curves of --quality-time runs");
      const std::string title = "Validation bits per byte at equal compute (" + std::to_string(int(o.quality_time)) +
                                " s of training each)";
      write_file_atomic(o.quality_svg, svg_figure(title, {{"against training time", "training seconds", "valid bits per byte", false, false, {}, curves_t},
                                                          {"against steps", "optimizer step", "valid bits per byte", false, false, {}, curves_s}}, 2));
      std::printf("wrote %s\n", o.quality_svg.c_str());
    }
  }
}

}  // namespace longseq
