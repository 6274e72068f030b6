// Shared vocabulary of longseq.
// Dimension letters used in every shape comment:
//   B batch, T length (queries), S length (keys), C model width,
//   H heads, D head width, V vocabulary size.
#pragma once
#include <stdexcept>
#include <string>
#include <vector>

namespace longseq {

// Every user-facing failure (bad config, bad file, bad shape) is an Error whose
// message names what is wrong; the program prints it and exits non-zero.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Joins items with a separator ("a, b, c"), for messages that list valid choices.
std::string join(const std::vector<std::string>& items, const std::string& sep = ", ");

}  // namespace longseq
