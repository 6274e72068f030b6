// Shared test helpers: scratch directories, files, finite differences.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <map>
#include <string>

#include "longseq/layers.h"
#include "longseq/train.h"

namespace longseq_test {

// A fresh empty directory for one test.
std::string scratch_dir(const std::string& name);
void write_text(const std::string& path, const std::string& text);
// Deterministic English-like text of about n bytes.
std::string sample_text(size_t n);

// Max |autograd - central finite difference| over every entry of `input`, for
// the scalar f(); f must be double precision. Inputs need requires_grad.
double gradcheck_error(const std::function<torch::Tensor()>& f, torch::Tensor input, double eps = 1e-6);

// Softmax attention under an explicit mask built by a test from a pattern's
// definition: q [B, H, T, D], k, v [B, H, S, D], allowed [B|1, H|1, T, S] bool.
// Rows with nothing allowed give zeros. Scores scaled by 1/sqrt(D).
torch::Tensor dense_masked_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                     const torch::Tensor& allowed);

// A module's parameter by name (fails the test if absent).
torch::Tensor param(const torch::nn::Module& m, const std::string& name);

// Max |difference| between the outputs of a and b and between the gradients
// of sum(out * w) with respect to each of `wrt` (a fixed random w).
double max_output_and_grad_diff(const std::function<torch::Tensor()>& a, const std::function<torch::Tensor()>& b,
                                const std::vector<torch::Tensor>& wrt);

// Reformer's reversible equations (sec. 3, eq. 9) through ordinary autograd: X1 = X2 = x, Y1 = X1 + mix(X2),
// Y2 = X2 + FF(Y1) per block, output (Y1 + Y2) / 2: the oracle of the reversible stack.
torch::Tensor reversible_by_autograd(std::vector<longseq::Block>& blocks, const torch::Tensor& x,
                                     longseq::MixContext& ctx, int64_t ff_chunks);

// The training losses a run logged in its metrics.jsonl, by step.
std::map<int64_t, double> logged_losses(const std::string& run);

// Options of a quiet training call into `dir` (resume: continue the run there).
longseq::TrainOptions quiet(const std::string& dir, bool resume = false);

// The work of a child process that trains: one thread (every child alike, so their sums round alike), a new run
// of the config file at `config`, or the resume of `run` when it has a config; stop_after > 0 stops there.
void child_trains(const std::string& run, const std::string& config, int64_t stop_after = 0);

// A run of cfg (train.log_every 1) into dir/whole, and one killed after `stop_after` steps into dir/killed then
// resumed: the logged losses and the final weights must be equal bit for bit. Returns the whole run's result.
longseq::TrainResult expect_exact_resume(const longseq::RunConfig& cfg, const std::string& dir, int64_t stop_after);

// RunConfig::from_json(j) must throw an Error whose message contains `needle`.
void expect_config_error(const longseq::Json& j, const std::string& needle);
// Each case: `base` with a merge patch applied must fail with a message containing its text.
void expect_config_errors(const longseq::Json& base, const std::vector<std::pair<longseq::Json, std::string>>& cases);

}  // namespace longseq_test
