// BigBird's block pattern, exposed so tests can build the dense mask from the
// same stored random table (Zaheer et al. 2020, App. D).
#pragma once
#include <cstdint>
#include <vector>

namespace longseq {

struct BigBirdPattern {
  int64_t blocks = 0;  // nb = ceil(T / block)
  bool exact = false;  // too short for the pattern: the mixer computes exact attention
  // rows[h][j]: the key blocks query block j of head h attends to, each once.
  std::vector<std::vector<std::vector<int64_t>>> rows;
};

// Bidirectional (ITC, App. D): blocks 0 and nb-1 are global (dense rows and
// columns); block j in between sees {j-1, j, j+1} and r random blocks drawn
// uniformly from the rest; exact when nb < r + 5 (not every row can draw r).
// Causal (the project's extension; the paper trains none): block j sees
// {0, j-1, j} and min(r, j-2) random blocks from [1, j-2], keyed on
// (seed, head, j) only, so a prefix keeps its pattern; exact when nb <= r + 3
// (the pattern then covers every past block).
// Row j of the causal pattern for head h: {0, j-1, j} and min(r, j-2) random
// blocks of [1, j-2]; a function of (j, r, seed, h) only, so decoding reuses it.
std::vector<int64_t> bigbird_causal_row(int64_t j, int64_t random_blocks, uint64_t seed, int64_t h);

BigBirdPattern bigbird_pattern(int64_t T, int64_t block, int64_t random_blocks, uint64_t seed, int64_t heads,
                               bool causal);

}  // namespace longseq
