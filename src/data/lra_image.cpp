// LRA Image (Tay et al. 2021; lra.md sec. 1 "Image"): CIFAR-10 in grayscale, 1,024 tokens per image, read from
// the binary version (cifar-10-batches-bin: records of 1 label byte + R, G, B planes of 32x32, row-major).
// Grayscale is TensorFlow's rgb_to_grayscale evaluated in float32; token = the gray value (0..255, vocab 256).
// Splits: the first 90% of data_batch_1..5 in file order train, the last 10% validation, test_batch.bin test
// (LRA: TFDS train[:90%] / train[90%:] / test, in TFDS's build order). Cost: one read of 180 MB.
#include <cmath>
#include <filesystem>

#include "longseq/common.h"
#include "longseq/lra.h"
#include "longseq/runtime.h"

namespace longseq {

namespace {

constexpr int64_t kSide = 32, kPixels = kSide * kSide, kRecord = 1 + 3 * kPixels;

// One float32 operation, evaluated in double and rounded once: exact float32 arithmetic (a product or sum of two
// floats is exact or innocuously double-rounded in double), and no compiler may fuse it into a multiply-add.
// The doubles below hold float32 values only.
float f32(double x) { return static_cast<float>(x); }

}  // namespace

uint8_t lra_grayscale(uint8_t r, uint8_t g, uint8_t b) {
  // tf.image.convert_image_dtype: uint8 -> float32 multiplies by float32(1. / 255); rgb_to_grayscale's weights.
  static const float scale = f32(1.0 / 255.0), wr = 0.2989f, wg = 0.5870f, wb = 0.1140f;
  const double fr = f32(double{scale} * r), fg = f32(double{scale} * g), fb = f32(double{scale} * b);
  const double pr = f32(fr * wr), pg = f32(fg * wg), pb = f32(fb * wb);
  const double gray = f32(f32(pr + pg) + pb);
  // float32 -> uint8: times 255.5 (dtype.max + 0.5, "avoid rounding problems"), then a truncating cast.
  const float scaled = f32(gray * 255.5);
  return static_cast<uint8_t>(std::min(255.0f, std::max(0.0f, scaled)));
}

TokenExamples read_cifar10_bin(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    throw Error("cifar10: " + path + " does not exist (data.path must be the cifar-10-batches-bin directory of "
                "cifar-10-binary.tar.gz)");
  if (!std::filesystem::is_regular_file(path, ec)) throw Error("cifar10: " + path + " is not a regular file");
  const std::string data = read_file(path);
  const auto size = static_cast<int64_t>(data.size());
  if (size == 0 || size % kRecord != 0)
    throw Error("cifar10: " + path + " holds " + std::to_string(size) + " bytes, not a whole number of " +
                std::to_string(kRecord) + "-byte records (1 label byte + 3 x 1,024 pixel bytes): truncated, or "
                "not the binary version (the python version's files are pickles)");
  TokenExamples out;
  std::vector<int16_t> gray(kPixels);
  for (int64_t rec = 0; rec < size / kRecord; ++rec) {
    const auto* p = reinterpret_cast<const unsigned char*>(data.data()) + rec * kRecord;
    if (p[0] >= kCifarClasses)
      throw Error("cifar10: " + path + ", record " + std::to_string(rec) + " (byte " + std::to_string(rec * kRecord) +
                  "): label " + std::to_string(p[0]) + " is not a class 0..9");
    for (int64_t i = 0; i < kPixels; ++i)  // planes R, G, B; within a plane row-major, as LRA flattens
      gray[static_cast<size_t>(i)] = lra_grayscale(p[1 + i], p[1 + kPixels + i], p[1 + 2 * kPixels + i]);
    out.add(gray.data(), kPixels, p[0]);
  }
  return out;
}

ClassificationSplits read_cifar10(const std::string& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    throw Error("cifar10: data.path " + dir + " does not exist or is not a directory (it must be the "
                "cifar-10-batches-bin directory of cifar-10-binary.tar.gz)");
  TokenExamples all;
  for (int k = 1; k <= 5; ++k) {
    const TokenExamples part = read_cifar10_bin(dir + "/data_batch_" + std::to_string(k) + ".bin");
    for (int64_t i = 0; i < part.size(); ++i)
      all.add(part.tokens(i), part.length(i), part.labels[static_cast<size_t>(i)]);
  }
  ClassificationSplits s;
  const int64_t n_valid = all.size() / 10;  // 50,000 -> 45,000 / 5,000
  for (int64_t i = 0; i < all.size(); ++i) {
    TokenExamples& split = i < all.size() - n_valid ? s.train : s.valid;
    split.add(all.tokens(i), all.length(i), all.labels[static_cast<size_t>(i)]);
  }
  s.test = read_cifar10_bin(dir + "/test_batch.bin");
  return s;
}

}  // namespace longseq
