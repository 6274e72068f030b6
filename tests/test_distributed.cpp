// Data-parallel training (distributed.h): two processes on loopback, each running half of every step's
// micro-batches, end with the weights and losses of one process running them all (train.accum = 2: the doubled
// batch, as two micro-batches of batch_size rows). With two processes the all-reduced sum of two gradients is
// one float addition, which commutes, and each micro-batch draws from its own seeds, so the runs agree bit for
// bit; a group stopped midway and resumed agrees too. The processes are this test binary started again with
// LONGSEQ_DP_RUN set.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstdlib>
#include <map>
#include <sstream>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/distributed.h"
#include "longseq/runtime.h"
#include "longseq/safetensors.h"
#include "longseq/train.h"

extern char** environ;

using namespace longseq;

namespace distributed_test {

const char* kRunEnv = "LONGSEQ_DP_RUN";
const char* kConfigEnv = "LONGSEQ_DP_CONFIG";
const char* kStopEnv = "LONGSEQ_DP_STOP";

Json small_config(const std::string& corpus, int64_t accum) {
  return {{"model", {{"d_model", 16}, {"n_heads", 2}, {"n_layers", 2}, {"d_ff", 32}, {"dropout", 0.1}}},
          {"data", {{"corpus", "text"}, {"path", corpus}}},
          {"train", {{"steps", 8}, {"batch_size", 2}, {"seq_len", 32}, {"accum", accum}, {"warmup", 2},
                     {"eval_every", 4}, {"eval_batches", 2}, {"log_every", 1}, {"checkpoint_every", 2}}}};
}

// A port the kernel handed out a moment ago (bound to port 0, then closed).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t n = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &n);
  ::close(fd);
  return ntohs(a.sin_port);
}

pid_t spawn_rank(const std::string& run, const std::string& config, int rank, int port, int64_t stop) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) env.push_back(*e);
  for (const auto& kv : std::map<std::string, std::string>{{kRunEnv, run},
                                                            {kConfigEnv, config},
                                                            {kStopEnv, std::to_string(stop)},
                                                            {"MASTER_ADDR", "127.0.0.1"},
                                                            {"MASTER_PORT", std::to_string(port)},
                                                            {"RANK", std::to_string(rank)},
                                                            {"LOCAL_RANK", std::to_string(rank)},
                                                            {"WORLD_SIZE", "2"}})
    env.push_back(kv.first + "=" + kv.second);
  std::vector<char*> envp;
  for (auto& s : env) envp.push_back(&s[0]);
  envp.push_back(nullptr);
  std::string exe = "/proc/self/exe", filter = "--gtest_filter=Distributed.TwoProcessesTrainAsOneWithTheirBatches";
  char* argv[] = {&exe[0], &filter[0], nullptr};
  pid_t pid = -1;
  return posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv, envp.data()) == 0 ? pid : -1;
}

bool finished_cleanly(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// Runs the group of two to its end (or to `stop`); true when both processes exited cleanly.
bool group_trains(const std::string& run, const std::string& config, int64_t stop) {
  const int port = free_port();
  const pid_t a = spawn_rank(run, config, 0, port, stop), b = spawn_rank(run, config, 1, port, stop);
  const bool ok_a = a > 0 && finished_cleanly(a), ok_b = b > 0 && finished_cleanly(b);
  return ok_a && ok_b;
}

// (step, key) -> value of every loss, validation and per-step field that the group must reproduce.
std::map<std::pair<int64_t, std::string>, double> logged(const std::string& run) {
  std::map<std::pair<int64_t, std::string>, double> out;
  std::istringstream in(read_file(run + "/metrics.jsonl"));
  std::string line;
  while (std::getline(in, line)) {
    auto j = Json::parse(line);
    for (const char* key : {"loss", "grad_norm", "valid_loss"})
      if (j.contains(key)) out[{j["step"].get<int64_t>(), key}] = j[key].get<double>();
  }
  return out;
}

TEST(Distributed, TwoProcessesTrainAsOneWithTheirBatches) {
  if (const char* run = std::getenv(kRunEnv)) {  // a rank of the group
    longseq_test::child_trains(run, std::getenv(kConfigEnv), std::stoll(std::getenv(kStopEnv)));
    return;
  }
  if (!distributed_available()) GTEST_SKIP() << "this build has no c10d / Gloo process groups";
  auto dir = longseq_test::scratch_dir("distributed");
  longseq_test::write_text(dir + "/corpus.txt", longseq_test::sample_text(20000));
  const std::string config = dir + "/config.json";
  write_file_atomic(config, small_config(dir + "/corpus.txt", 2).dump());

  longseq_test::child_trains(dir + "/one", config, 0);  // one process, both micro-batches of every step
  ASSERT_TRUE(group_trains(dir + "/group", config, 0)) << "a rank of the group failed";
  // The resumed group sums a bucket per parameter, each started by the backward as its gradient is final.
  const std::string per_parameter = dir + "/per_parameter.json";
  auto cfg = small_config(dir + "/corpus.txt", 2);
  cfg["train"]["allreduce_bucket_mb"] = 0;
  write_file_atomic(per_parameter, cfg.dump());
  ASSERT_TRUE(group_trains(dir + "/resumed", per_parameter, 4)) << "a rank failed before its stop";
  ASSERT_FALSE(path_exists(dir + "/resumed/model.safetensors") &&
               load_safetensors(dir + "/resumed/model.safetensors").metadata.at("step") == "8")
      << "the stopped group ran to its end";
  ASSERT_TRUE(group_trains(dir + "/resumed", per_parameter, 0)) << "a rank failed to resume";

  const auto want = logged(dir + "/one");
  ASSERT_EQ(want.size(), 8u * 2 + 1 + 1);  // loss and grad_norm per step, validations at 4 and at the end
  EXPECT_EQ(logged(dir + "/group"), want);
  EXPECT_EQ(logged(dir + "/resumed"), want);
  const auto a = load_safetensors(dir + "/one/model.safetensors");
  for (const char* other : {"/group", "/resumed"}) {
    const auto b = load_safetensors(dir + other + std::string("/model.safetensors"));
    ASSERT_EQ(a.tensors.size(), b.tensors.size());
    for (size_t i = 0; i < a.tensors.size(); ++i) {
      EXPECT_EQ(a.tensors[i].first, b.tensors[i].first);
      EXPECT_TRUE(torch::equal(a.tensors[i].second, b.tensors[i].second)) << other << ": " << a.tensors[i].first;
    }
  }
  // Only rank 0 wrote: as many metrics lines as the single process, not twice as many.
  auto lines = [](const std::string& path) {
    const std::string text = read_file(path);
    return std::count(text.begin(), text.end(), '\n');
  };
  EXPECT_EQ(lines(dir + "/group/metrics.jsonl"), lines(dir + "/one/metrics.jsonl"));
}

// A group of one standing for two processes with equal gradients: each sum doubles its buffer when waited for.
// It records, per sum started, whether the first layer's gradient was still missing (the backward still running).
struct DoublingGroup : ProcessGroup {
  int rank() const override { return 0; }
  int size() const override { return 2; }
  std::function<void()> start_sum(const torch::Tensor& flat) override {
    started_early.push_back(!first->grad().defined());
    return [flat]() mutable { flat.mul_(2); };
  }
  void broadcast(const std::vector<torch::Tensor>&) override {}
  void barrier() override {}
  const torch::Tensor* first = nullptr;
  std::vector<bool> started_early;
};

TEST(Distributed, GradientSumsStartDuringTheBackwardAndEqualTheBlockingSums) {
  torch::manual_seed(3);
  torch::nn::Sequential net(torch::nn::Linear(8, 16), torch::nn::Tanh(), torch::nn::Linear(16, 16), torch::nn::Tanh(),
                            torch::nn::Linear(16, 4));
  auto unused = torch::randn({5}, torch::requires_grad());  // reached by no backward: summed as zeros
  auto params = net->parameters();
  params.push_back(unused);
  const auto x = torch::randn({3, 8});
  auto backward = [&] {
    for (auto& p : params) p.mutable_grad() = torch::Tensor();
    net->forward(x).pow(2).sum().backward();
  };
  DoublingGroup group;
  group.first = &params[0];  // the first layer's weight: its gradient comes last
  OverlappedGradientSum sum(group, params, 0);  // one bucket per parameter
  EXPECT_EQ(sum.buckets(), static_cast<int64_t>(params.size()));
  backward();  // not armed: an earlier micro-batch's backward starts nothing
  EXPECT_TRUE(group.started_early.empty());
  std::vector<torch::Tensor> blocking;
  for (auto& p : params) blocking.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
  group.sum(blocking);  // the blocking path, bucketed in parameter order
  group.started_early.clear();
  sum.arm();
  backward();
  const auto early = group.started_early;
  sum.finish();
  EXPECT_EQ(sum.started_during_backward(), static_cast<int64_t>(params.size()) - 1);  // all but the unused one
  ASSERT_FALSE(early.empty());
  EXPECT_TRUE(early.front()) << "the last layer's sum waited for the first layer's gradient";
  for (size_t i = 0; i < params.size(); ++i) EXPECT_TRUE(torch::equal(params[i].grad(), blocking[i])) << i;
  EXPECT_TRUE(torch::equal(unused.grad(), torch::zeros({5})));
  EXPECT_THROW(sum.finish(), Error);  // not armed again
}

template <class F>
void expect_error_containing(F f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing: " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Distributed, BadGroupSettingsAreNamedBeforeAnyRendezvous) {
  auto dir = longseq_test::scratch_dir("distributed_bad");
  longseq_test::write_text(dir + "/corpus.txt", longseq_test::sample_text(20000));
  auto cfg = RunConfig::from_json(small_config(dir + "/corpus.txt", 1));
  ::setenv("WORLD_SIZE", "2", 1);
  TrainOptions o;
  o.out_dir = dir + "/run";
  o.quiet = true;
  expect_error_containing([&] { train_run(&cfg, o); }, "train.accum = 1 is not a multiple of WORLD_SIZE = 2");
  EXPECT_FALSE(path_exists(dir + "/run"));
  ::unsetenv("RANK");
  expect_error_containing([&] { process_group_from_environment(1); }, "RANK is not set");
  ::setenv("RANK", "2", 1);
  expect_error_containing([&] { process_group_from_environment(1); }, "RANK is \"2\"");
  ::setenv("WORLD_SIZE", "two", 1);
  expect_error_containing([&] { world_size_from_environment(); }, "WORLD_SIZE is \"two\"");
  ::unsetenv("RANK");
  ::unsetenv("WORLD_SIZE");
  EXPECT_EQ(world_size_from_environment(), 1);
  EXPECT_EQ(process_group_from_environment(1), nullptr);
}

}  // namespace distributed_test
