#include "longseq/rotary.h"

#include <cmath>

#include "longseq/common.h"

namespace longseq {

int64_t rotary_channels(int64_t D, const RotarySpec& spec) {
  return static_cast<int64_t>(std::floor(spec.fraction * static_cast<double>(D) / 2.0)) * 2;
}

torch::Tensor apply_rotary(const torch::Tensor& x, const torch::Tensor& positions, const RotarySpec& spec) {
  TORCH_CHECK(x.dim() == 4, "rotary: x must be [B, H, T, D], got ", x.sizes());
  const int64_t B = x.size(0), T = x.size(2), D = x.size(3), R = rotary_channels(D, spec), nb = R / 2;
  TORCH_CHECK((positions.dim() == 1 && positions.size(0) == T) ||
                  (positions.dim() == 2 && positions.size(0) == B && positions.size(1) == T),
              "rotary: positions must be [T] or [B, T] for x ", x.sizes(), ", got ", positions.sizes());
  if (nb == 0) return x;
  auto opts = x.options().dtype(torch::kDouble);
  // Wavelengths 1 .. max_wavelength, endpoint included (one band: wavelength 1).
  auto k = torch::arange(nb, opts);
  auto omega = nb > 1 ? torch::pow(spec.max_wavelength, -k / static_cast<double>(nb - 1)) : torch::ones({1}, opts);
  auto pos = positions.to(torch::kDouble);
  auto angle = pos.unsqueeze(-1) * omega;                                // [T, nb] or [B, T, nb], double
  if (angle.dim() == 3) angle = angle.unsqueeze(1);                      // [B, 1, T, nb]
  // cos and sin in double: a float angle at position 1e5 is off by ~0.01 rad in the fastest band.
  auto cos = torch::cos(angle).to(x.scalar_type()), sin = torch::sin(angle).to(x.scalar_type());
  auto pairs = x.narrow(3, 0, R).reshape({B, x.size(1), T, nb, 2});
  auto a = pairs.select(4, 0), b = pairs.select(4, 1);
  auto turned = torch::stack({a * cos - b * sin, b * cos + a * sin}, 4).reshape({B, x.size(1), T, R});
  return R == D ? turned : torch::cat({turned, x.narrow(3, R, D - R)}, 3);
}

}  // namespace longseq
