// `longseq lra TASK --mixers ...`: one LRA task trained and scored for several mixers in one run, each in its own
// process (`longseq lra TASK --mixer M --out DIR/M`), and one table of test accuracy, training time and peak memory
// beside LRA's published Table 1 (docs/lra.md, "All mixers in one table").
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>

#include "commands.h"
#include "longseq/common.h"
#include "longseq/registry.h"
#include "longseq/runtime.h"

extern char** environ;

namespace longseq {

namespace {

// LRA's Table 1 (Tay et al. 2021; the repository's leaderboard of 8 Nov 2020), test accuracy %, for the mixers here
// that a row of it implements.
const std::map<std::string, std::pair<double, double>>& lra_table1() {  // mixer -> (ListOps, Pathfinder)
  static const std::map<std::string, std::pair<double, double>> t = {
      {"full", {36.37, 71.40}},      {"longformer", {35.63, 69.71}}, {"bigbird", {36.05, 74.87}},
      {"lsh", {37.27, 68.50}},       {"linear", {16.13, 75.30}},     {"performer", {18.01, 77.05}}};
  return t;
}

const char* table1_row(const std::string& mixer) {
  static const std::map<std::string, const char*> rows = {{"full", "Transformer"}, {"longformer", "Longformer"},
                                                          {"bigbird", "BigBird"},  {"lsh", "Reformer"},
                                                          {"linear", "Linear Trans."}, {"performer", "Performer"}};
  auto it = rows.find(mixer);
  return it == rows.end() ? "" : it->second;
}

// The mixers a table of every mixer takes: those an encoder (bidirectional attention) can run.
std::vector<std::string> bidirectional_mixers() {
  std::vector<std::string> out;
  for (const auto& m : mixer_registry())
    if (m.supports_bidirectional) out.push_back(m.name);
  return out;
}

// The last metrics line's training time (s) of a run directory; -1 when absent.
double last_train_seconds(const std::string& run) {
  std::ifstream in(run + "/metrics.jsonl");
  std::string line;
  double s = -1;
  while (std::getline(in, line)) {
    auto j = Json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("train_s")) s = j["train_s"].get<double>();
  }
  return s;
}

// Runs `longseq lra TASK --mixer M --out RUN ...` and returns its exit status (-1: could not start it).
int run_one(const std::string& task, const std::string& mixer, const std::string& run, const LraOptions& o,
            const std::vector<std::string>& sets, bool resume) {
  std::vector<std::string> args = {"/proc/self/exe"};
  if (o.threads > 0) args.insert(args.end(), {"--threads", std::to_string(o.threads)});
  args.insert(args.end(), {"lra", task, "--mixer", mixer, "--out", run, "--quiet"});
  if (!o.data_dir.empty()) args.insert(args.end(), {"--data", o.data_dir});
  for (const auto& kv : sets) args.insert(args.end(), {"--set", kv});
  if (resume) args.push_back("--resume");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(&a[0]);
  argv.push_back(nullptr);
  pid_t pid = -1;
  if (posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0) return -1;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

std::string fixed(double x, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, x);
  return buf;
}

}  // namespace

std::vector<std::string> lra_table_mixers(const std::vector<std::string>& given) {
  if (given.size() == 1 && given[0] == "all") return bidirectional_mixers();
  for (const auto& m : given) {
    const MixerInfo& info = find_mixer(m);  // throws, listing the names
    if (!info.supports_bidirectional)
      throw Error("lra: mixer " + m + " has no bidirectional mode, which the encoder classifier needs");
  }
  return given;
}

void lra_table_command(const std::string& task, const std::vector<std::string>& mixers, const LraOptions& o,
                       const std::vector<std::string>& sets) {
  const std::string dir = o.out_dir.empty() ? "lra_" + task + "_table" : o.out_dir;
  ::mkdir(dir.c_str(), 0755);
  if (!path_exists(dir)) throw Error("lra: cannot create " + dir);
  const bool listops = task == "listops", pathfinder = task == "pathfinder";
  Json rows = Json::array();
  std::string md = "| mixer | test accuracy % | chance % | steps | training s | tokens/s | peak MiB | LRA Table 1 |\n"
                   "|---|---|---|---|---|---|---|---|\n";
  for (size_t i = 0; i < mixers.size(); ++i) {
    const std::string& m = mixers[i];
    const std::string run = dir + "/" + m;
    Json row = {{"mixer", m}};
    if (!path_exists(run + "/test.json")) {  // trained here, or continued from its last checkpoint
      std::fprintf(stderr, "[%zu/%zu] %s: training into %s ...\n", i + 1, mixers.size(), m.c_str(), run.c_str());
      const auto t0 = std::chrono::steady_clock::now();
      const int status = run_one(task, m, run, o, sets, path_exists(run + "/config.json"));
      row["wall_s"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (status != 0) row["failed"] = "exit status " + std::to_string(status) + " (see its run directory)";
    }
    const Json t = path_exists(run + "/test.json") ? Json::parse(read_file(run + "/test.json"), nullptr, false) : Json();
    if (t.is_object() && t.contains("accuracy")) {
      row["accuracy"] = t["accuracy"], row["chance"] = t["majority_class_accuracy"], row["step"] = t["step"];
      row["peak_mib"] = t.value("peak_mib", -1.0), row["train_tokens_per_s"] = t.value("train_tokens_per_s", -1.0);
      row["train_s"] = last_train_seconds(run);
      row.erase("failed");
    } else if (!row.contains("failed")) {
      row["failed"] = "no test.json in " + run;
    }
    std::string published = "-";
    auto it = lra_table1().find(m);
    if (it != lra_table1().end() && (listops || pathfinder))
      published = fixed(listops ? it->second.first : it->second.second, 2) + " (" + table1_row(m) + ")";
    row["lra_table1"] = published;
    if (row.contains("failed")) {
      md += "| " + m + " | failed: " + row["failed"].get<std::string>() + " | | | | | | " + published + " |\n";
      std::fprintf(stderr, "[%zu/%zu] %s: failed (%s)\n", i + 1, mixers.size(), m.c_str(),
                   row["failed"].get<std::string>().c_str());
    } else {
      const double peak = row["peak_mib"].get<double>(), tps = row["train_tokens_per_s"].get<double>();
      md += "| " + m + " | " + fixed(100 * row["accuracy"].get<double>(), 2) + " | " +
            fixed(100 * row["chance"].get<double>(), 2) + " | " + std::to_string(row["step"].get<int64_t>()) + " | " +
            fixed(row["train_s"].get<double>(), 0) + " | " + (tps > 0 ? fixed(tps, 0) : "-") + " | " +
            (peak > 0 ? fixed(peak, 0) : "-") + " | " + published + " |\n";
      std::fprintf(stderr, "[%zu/%zu] %s: test accuracy %.2f%%\n", i + 1, mixers.size(), m.c_str(),
                   100 * row["accuracy"].get<double>());
    }
    rows.push_back(row);
    write_file_atomic(dir + "/table.json", rows.dump(2) + "\n");  // after every mixer: a stopped run keeps its rows
  }
  write_file_atomic(dir + "/table.md", md);
  std::printf("LRA %s, %zu mixers (runs in %s/<mixer>):\n\n%s", task.c_str(), mixers.size(), dir.c_str(), md.c_str());
  std::vector<std::string> failed;
  for (const auto& r : rows)
    if (r.contains("failed")) failed.push_back(r["mixer"].get<std::string>());
  if (!failed.empty())
    throw Error("lra: " + std::to_string(failed.size()) + " of " + std::to_string(mixers.size()) +
                " mixers did not finish (" + join(failed, ", ") + "); their rows in " + dir +
                "/table.md say why, and calling the command again continues them");
}

}  // namespace longseq
