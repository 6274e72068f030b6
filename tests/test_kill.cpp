// Kill harness (issue 10, sec. 5): a tiny training run is killed with SIGKILL
// at random moments, some of them inside a checkpoint write, 20 times, each
// time resumed; run to its end it must log the losses of the uninterrupted run
// bit for bit and leave the same files, none corrupt, none stray.
//
// The run goes on in child processes: this test binary started again with
// LONGSEQ_KILL_HARNESS_RUN set, where the same test trains (or resumes) that
// run and returns instead of driving the harness.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/runtime.h"
#include "longseq/train.h"

extern char** environ;

using namespace longseq;

namespace kill_test {

const char* kRunEnv = "LONGSEQ_KILL_HARNESS_RUN";
const char* kConfigEnv = "LONGSEQ_KILL_HARNESS_CONFIG";

Json harness_config(const std::string& corpus) {
  return {{"model", {{"d_model", 16}, {"n_heads", 2}, {"n_layers", 1}, {"d_ff", 32}, {"dropout", 0.1}}},
          {"data", {{"corpus", "text"}, {"path", corpus}}},
          {"train", {{"steps", 40}, {"batch_size", 2}, {"seq_len", 32}, {"warmup", 4}, {"eval_every", 10},
                     {"eval_batches", 2}, {"log_every", 1}, {"checkpoint_every", 2}}}};
}

pid_t spawn_child(const std::string& run, const std::string& config) {
  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) env_strings.push_back(*e);
  env_strings.push_back(std::string(kRunEnv) + "=" + run);
  env_strings.push_back(std::string(kConfigEnv) + "=" + config);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(&s[0]);
  envp.push_back(nullptr);
  std::string exe = "/proc/self/exe", filter = "--gtest_filter=KillHarness.ResumeAfterEveryKillIsExact";
  char* argv[] = {&exe[0], &filter[0], nullptr};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, exe.c_str(), &actions, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return -1;
  return pid;
}

// Waits for the child; true when it exited by itself with status 0.
bool finished_cleanly(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

bool exited(pid_t pid) {
  int status = 0;
  return ::waitpid(pid, &status, WNOHANG) == pid;  // reaps it: the caller must not wait again
}

std::map<std::string, std::string> files_of(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    out[e.path().filename().string()] = e.path().filename() == "metrics.jsonl" ? "" : read_file(e.path().string());
  return out;
}

// (step, key) -> value for every loss and validation line; a repeated line counts twice.
std::multimap<std::pair<int64_t, std::string>, double> logged(const std::string& run) {
  std::multimap<std::pair<int64_t, std::string>, double> out;
  std::istringstream in(read_file(run + "/metrics.jsonl"));
  std::string line;
  while (std::getline(in, line)) {
    auto j = Json::parse(line);  // a corrupt line fails the test here
    for (const char* key : {"loss", "valid_loss"})
      if (j.contains(key)) out.insert({{j["step"].get<int64_t>(), key}, j[key].get<double>()});
  }
  return out;
}

TEST(KillHarness, ResumeAfterEveryKillIsExact) {
  if (const char* run = std::getenv(kRunEnv)) {  // this process is a child of the harness
    longseq_test::child_trains(run, std::getenv(kConfigEnv));
    return;
  }
  auto dir = longseq_test::scratch_dir("kill_harness");
  longseq_test::write_text(dir + "/corpus.txt", longseq_test::sample_text(20000));
  const std::string config = dir + "/config.json";
  write_file_atomic(config, harness_config(dir + "/corpus.txt").dump());

  const auto t0 = std::chrono::steady_clock::now();
  pid_t whole = spawn_child(dir + "/whole", config);
  ASSERT_GT(whole, 0);
  ASSERT_TRUE(finished_cleanly(whole)) << "the uninterrupted run failed";
  const double full_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const std::string run = dir + "/killed";
  std::mt19937_64 rng(2026);
  int inside_writes = 0, finished_early = 0;
  for (int kill = 0; kill < 20; ++kill) {
    pid_t pid = spawn_child(run, config);
    ASSERT_GT(pid, 0);
    bool gone = false;
    if (kill % 3 == 2) {
      // Inside a checkpoint write: as soon as the temporary file of one of the two exists.
      const std::string target = run + (kill % 2 ? "/model.safetensors.tmp." : "/trainer_state.safetensors.tmp.") +
                                 std::to_string(pid);
      const auto limit = std::chrono::steady_clock::now() + std::chrono::duration<double>(2 * full_s + 5);
      while (!(gone = exited(pid)) && !path_exists(target) && std::chrono::steady_clock::now() < limit)
        std::this_thread::yield();
      if (!gone) {
        ::kill(pid, SIGKILL);
        if (path_exists(target)) ++inside_writes;  // the write was still going on when the kill landed
      }
    } else {
      // Anywhere, startup and the run's setup included.
      std::uniform_real_distribution<double> at(0.0, 0.3 * full_s);
      std::this_thread::sleep_for(std::chrono::duration<double>(at(rng)));
      ::kill(pid, SIGKILL);
    }
    if (gone || finished_cleanly(pid)) ++finished_early;  // the run ended before the kill came
  }
  pid_t last = spawn_child(run, config);
  ASSERT_GT(last, 0);
  ASSERT_TRUE(finished_cleanly(last)) << "the run could not be resumed after the kills";
  std::printf("kill harness: 20 kills, %d inside a checkpoint write, %d runs finished before their kill\n",
              inside_writes, finished_early);
  EXPECT_GE(inside_writes, 3);

  EXPECT_EQ(logged(run), logged(dir + "/whole"));
  // Same files, same bytes (weights, moments, config), no temporary left behind.
  auto a = files_of(dir + "/whole"), b = files_of(run);
  std::string names_a, names_b;
  for (const auto& kv : a) names_a += kv.first + " ";
  for (const auto& kv : b) names_b += kv.first + " ";
  EXPECT_EQ(names_b, names_a);
  for (const auto& kv : a)
    if (b.count(kv.first)) EXPECT_TRUE(b[kv.first] == kv.second) << kv.first << " differs from the uninterrupted run's";
  EXPECT_NO_THROW(load_run(run));
}

}  // namespace kill_test
