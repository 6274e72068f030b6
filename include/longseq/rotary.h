// Rotary positions as Perceiver AR uses them (Hawthorne et al. 2022, sec. 3;
// Su et al. 2021): the first `fraction` of each head's channels, as adjacent
// (even, odd) pairs, are turned by position * omega_k, where the band
// wavelengths run geometrically from exactly 1 to exactly `max_wavelength`:
// lambda_k = max_wavelength^(k / (nb - 1)), omega_k = 1 / lambda_k, k = 0..nb-1.
// q and k rotated alike make q.k depend on the positions' difference only.
#pragma once
#include <torch/torch.h>

namespace longseq {

struct RotarySpec {
  double fraction = 0.5;          // share of each head's channels rotated (rounded down to an even count)
  double max_wavelength = 2048;   // the slowest band's wavelength, in positions
};

// Channels of a D-wide head that `spec` rotates (even, possibly 0).
int64_t rotary_channels(int64_t D, const RotarySpec& spec);

// x: [B, H, T, D]; positions: [T] or [B, T] (any numeric dtype) -> x with its
// first rotary_channels(D) channels of each head rotated; differentiable in x.
torch::Tensor apply_rotary(const torch::Tensor& x, const torch::Tensor& positions, const RotarySpec& spec);

}  // namespace longseq
