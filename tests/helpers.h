// Shared test helpers: scratch directories, files, finite differences.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <string>

namespace longseq_test {

// A fresh empty directory for one test.
std::string scratch_dir(const std::string& name);
void write_text(const std::string& path, const std::string& text);
// Deterministic English-like text of about n bytes.
std::string sample_text(size_t n);

// Max |autograd - central finite difference| over every entry of `input`, for
// the scalar f(); f must be double precision. Inputs need requires_grad.
double gradcheck_error(const std::function<torch::Tensor()>& f, torch::Tensor input, double eps = 1e-6);

}  // namespace longseq_test
