// Long Range Arena Pathfinder (lra.md sec. 1): the generator checked against the task's definition (a flood fill over
// the image decides the label), snakes2's geometry, the released layout written and read back (PNG, metadata text
// lines, .npy string arrays), and the classification plumbing.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <set>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/lra.h"
#include "longseq/runtime.h"
#include "longseq/train.h"

using namespace longseq;

namespace pathfinder_test {

constexpr double kPi = 3.14159265358979323846;

// Components of the pixels above `threshold`, 8-connected (breadth-first): each pixel's component number, -1 below.
std::vector<int> components(const std::vector<uint8_t>& px, int64_t W, int threshold, int& count) {
  std::vector<int> comp(px.size(), -1);
  count = 0;
  for (int64_t start = 0; start < W * W; ++start) {
    if (px[static_cast<size_t>(start)] <= threshold || comp[static_cast<size_t>(start)] >= 0) continue;
    std::vector<int64_t> queue{start};
    comp[static_cast<size_t>(start)] = count;
    for (size_t h = 0; h < queue.size(); ++h) {
      const int64_t y = queue[h] / W, x = queue[h] % W;
      for (int64_t dy = -1; dy <= 1; ++dy)
        for (int64_t dx = -1; dx <= 1; ++dx) {
          const int64_t ny = y + dy, nx = x + dx;
          if (ny < 0 || nx < 0 || ny >= W || nx >= W) continue;
          const size_t n = static_cast<size_t>(ny * W + nx);
          if (px[n] > threshold && comp[n] < 0) comp[n] = count, queue.push_back(ny * W + nx);
        }
    }
    ++count;
  }
  return comp;
}

int at(const std::vector<int>& comp, int64_t W, const std::array<double, 2>& p) {
  return comp[static_cast<size_t>(static_cast<int64_t>(p[0]) * W + static_cast<int64_t>(p[1]))];
}

// The contour length of a chain of n paddles, from snakes2's geometry: pivots paddle_length + 2 margin apart, the
// seed and the far tip paddle_length + margin from the nearest pivot.
double expected_segment(int64_t k, int64_t n, int64_t l, int64_t m) {
  if (n == 1) return static_cast<double>(l);
  return static_cast<double>(k == 0 || k == n - 1 ? l + m : l + 2 * m);
}

// Every image of a data set: the label is whether the markers share a component of the stroke pixels; each contour is
// one component of its own; the geometry is snakes2's.
void check_images(const PathfinderOptions& o, int64_t first, int64_t count, int64_t& ones, double& distractors) {
  const int64_t W = o.size;
  distractors = 0;
  for (int64_t i = first; i < first + count; ++i) {
    const PathfinderSample s = draw_pathfinder(o, i);
    ASSERT_EQ(static_cast<int64_t>(s.pixels.size()), W * W);
    ones += s.label;
    int n = 0;
    const auto comp = components(s.pixels, W, 0, n);
    const int a = at(comp, W, s.markers[0]), b = at(comp, W, s.markers[1]);
    ASSERT_GE(a, 0) << "image " << i << ": marker 1 lies on a black pixel";
    ASSERT_GE(b, 0) << "image " << i;
    EXPECT_EQ(a == b, s.label == 1) << "image " << i << ", label " << s.label;
    ASSERT_GE(s.contours.size(), 2u);
    EXPECT_EQ(n, static_cast<int>(s.contours.size())) << "image " << i << ": contours touch or break";
    distractors += static_cast<double>(s.contours.size() - 2) / static_cast<double>(count);
    EXPECT_LE(static_cast<int64_t>(s.contours.size()) - 2, o.num_distractor_snakes);
    // The markers sit at A's seed and at the far tip of A (label 1) or B (label 0).
    const auto& A = s.contours[0];
    const auto& B = s.contours[1];
    EXPECT_EQ(s.markers[0], A.front());
    EXPECT_EQ(s.markers[1], s.label ? A.back() : B.back());
    // One target's seed is a pixel centre in the central box (A is either target); the other is seed_distance
    // away, both coordinates rounded to pixels.
    const double lo = 2.0 * static_cast<double>(o.seed_distance), hi = static_cast<double>(W) - lo;
    auto central = [&](const std::array<double, 2>& p) { return p[0] >= lo && p[1] >= lo && p[0] < hi && p[1] < hi; };
    EXPECT_TRUE(central(A[0]) || central(B[0])) << "image " << i;
    EXPECT_NEAR(std::hypot(A[0][0] - B[0][0], A[0][1] - B[0][1]), static_cast<double>(o.seed_distance), 0.72);
    std::set<int> seen;
    for (size_t c = 0; c < s.contours.size(); ++c) {
      const auto& v = s.contours[c];
      const int64_t paddles = c < 2 ? o.contour_length : o.distractor_length;
      ASSERT_EQ(static_cast<int64_t>(v.size()), paddles + 1);
      const int id = at(comp, W, v[0]);
      EXPECT_TRUE(seen.insert(id).second) << "image " << i << ": contours " << c << " and another are joined";
      double total = 0;
      for (int64_t k = 0; k < paddles; ++k) {
        const auto &p = v[static_cast<size_t>(k)], &q = v[static_cast<size_t>(k + 1)];
        const double len = std::hypot(q[0] - p[0], q[1] - p[1]);
        EXPECT_NEAR(len, expected_segment(k, paddles, o.paddle_length, s.margin), 1e-9);
        total += len;
        EXPECT_EQ(at(comp, W, q), id) << "image " << i << ", contour " << c << ", vertex " << k + 1;
        for (double t : {0.0, 1.0}) {  // strokes stay out of the padding
          const double y = p[0] + t * (q[0] - p[0]), x = p[1] + t * (q[1] - p[1]);
          EXPECT_TRUE(y >= static_cast<double>(o.padding) && x >= static_cast<double>(o.padding) &&
                      y < static_cast<double>(W - o.padding) && x < static_cast<double>(W - o.padding));
        }
        if (k > 0) {  // the turn: weight cos^2(min(continuity |dtheta|, pi/2)) > 0
          const auto& r = v[static_cast<size_t>(k - 1)];
          double d = std::fabs(std::atan2(q[0] - p[0], q[1] - p[1]) - std::atan2(p[0] - r[0], p[1] - r[1]));
          d = std::min(d, 2 * kPi - d);
          EXPECT_LT(o.continuity * d, kPi / 2 + 1e-9);
        }
      }
      // Pixels of a contour's component: a curve of length `total` covers at least total / sqrt(2) pixels (a
      // diagonal lattice path), a band of width t at most (t + 1.5) per unit of length, plus the marker discs.
      int64_t pixels = 0;
      for (int v2 : comp) pixels += v2 == id;
      const double disc = std::pow(2 * o.marker_radius + 2, 2), most = (o.paddle_thickness + 1.5) * total;
      EXPECT_GE(static_cast<double>(pixels), total / std::sqrt(2.0)) << "image " << i << ", contour " << c;
      EXPECT_LE(static_cast<double>(pixels), most + 2 * disc + 4) << "image " << i << ", contour " << c;
    }
    // 8-bit range: the brightest pixel 255 (scipy's rescaling), every stroke pixel well above 0, most pixels black.
    int lowest = 255, highest = 0, black = 0;
    for (uint8_t p : s.pixels) {
      if (p == 0) ++black;
      else lowest = std::min<int>(lowest, p);
      highest = std::max<int>(highest, p);
    }
    EXPECT_EQ(highest, 255);
    EXPECT_GE(lowest, 30);  // so any threshold below 30 gives the components above
    EXPECT_GT(black, W * W / 2);
  }
}

TEST(Pathfinder, EveryImageIsLabelledByTheConnectivityOfItsMarkers) {  // the task's definition, 32 px hard
  const PathfinderOptions o = pathfinder_options(32, "hard", 3);
  EXPECT_EQ(o.contour_length, 14);
  EXPECT_EQ(o.distractor_length, 4);
  EXPECT_EQ(o.num_distractor_snakes, 5);
  int64_t ones = 0;
  double distractors = 0;
  check_images(o, 0, 300, ones, distractors);
  EXPECT_GE(ones, 150 - 35);  // label ~ U{0, 1}: 4 standard deviations of Binomial(300, 1/2)
  EXPECT_LE(ones, 150 + 35);
  EXPECT_GT(distractors, 3.5) << "distractors placed per image (of 5)";
}

TEST(Pathfinder, OtherDifficultiesAndSizes) {
  for (const char* difficulty : {"baseline", "intermediate"}) {
    const PathfinderOptions o = pathfinder_options(32, difficulty, 4);
    EXPECT_EQ(o.contour_length, std::string(difficulty) == "baseline" ? 6 : 9);
    int64_t ones = 0;
    double distractors = 0;
    check_images(o, 0, 60, ones, distractors);
  }
  for (int64_t size : {64, 128}) {
    const PathfinderOptions o = pathfinder_options(size, "hard", 5);
    int64_t ones = 0;
    double distractors = 0;
    check_images(o, 0, size == 64 ? 12 : 4, ones, distractors);
  }
  EXPECT_THROW(pathfinder_options(48, "hard"), Error);
  EXPECT_THROW(pathfinder_options(32, "easy"), Error);
  PathfinderOptions bad = pathfinder_options(32, "hard");
  bad.seed_distance = 8;  // the first seed's box [16, 16) is empty
  EXPECT_THROW(draw_pathfinder(bad, 0), Error);
}

TEST(Pathfinder, DeterministicBySeedAndIndex) {
  const PathfinderOptions o = pathfinder_options(32, "hard", 11);
  const PathfinderSample a = draw_pathfinder(o, 7), b = draw_pathfinder(o, 7);
  EXPECT_EQ(a.pixels, b.pixels);
  EXPECT_EQ(a.label, b.label);
  EXPECT_NE(draw_pathfinder(o, 8).pixels, a.pixels);
  EXPECT_NE(draw_pathfinder(pathfinder_options(32, "hard", 12), 7).pixels, a.pixels);
  // Generated in parallel = drawn one by one.
  const PathfinderImages all = generate_pathfinder_images(o, 30);
  ASSERT_EQ(all.count(), 30);
  for (int64_t i : {0, 7, 29}) {
    const auto s = draw_pathfinder(o, i);
    EXPECT_TRUE(std::equal(s.pixels.begin(), s.pixels.end(), all.pixels.begin() + i * 1024));
    EXPECT_EQ(all.labels[static_cast<size_t>(i)], s.label);
  }
}

TEST(Pathfinder, SplitsAreASeededShuffle8010) {
  const PathfinderImages images = generate_pathfinder_images(pathfinder_options(32, "baseline", 2), 50);
  const auto s = pathfinder_splits(images, 42);
  EXPECT_EQ(s.train.size(), 40);
  EXPECT_EQ(s.valid.size(), 5);
  EXPECT_EQ(s.test.size(), 5);
  // Together the splits hold each image once, tokens = pixels (vocab 256), 1024 per image.
  std::multiset<std::vector<int16_t>> want, got;
  for (int64_t i = 0; i < 50; ++i) {
    std::vector<int16_t> t(images.pixels.begin() + i * 1024, images.pixels.begin() + (i + 1) * 1024);
    t.push_back(static_cast<int16_t>(1000 + images.labels[static_cast<size_t>(i)]));
    want.insert(t);
  }
  for (const TokenExamples* split : {&s.train, &s.valid, &s.test})
    for (int64_t i = 0; i < split->size(); ++i) {
      ASSERT_EQ(split->length(i), 1024);
      const int16_t* p = split->ids.data() + split->offsets[static_cast<size_t>(i)];
      std::vector<int16_t> t(p, p + 1024);
      t.push_back(static_cast<int16_t>(1000 + split->labels[static_cast<size_t>(i)]));
      got.insert(t);
    }
  EXPECT_EQ(want, got);
  EXPECT_EQ(pathfinder_splits(images, 42).valid.ids, s.valid.ids);
  EXPECT_NE(pathfinder_splits(images, 43).train.ids, s.train.ids);
  PathfinderImages few = images;
  few.labels.resize(9);
  EXPECT_THROW(pathfinder_splits(few, 1), Error);
}

// The bytes of a .npy file (NumPy format 1.0) holding `cells` as a string array, built from the format's definition.
std::string npy(const std::string& descr, const std::string& shape, const std::vector<std::string>& cells,
                size_t chars, bool fortran = false) {
  std::string header = "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") +
                       ", 'shape': " + shape + ", }";
  while ((10 + header.size() + 1) % 64) header += ' ';
  header += '\n';
  std::string out = "\x93NUMPY";
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>(header.size() >> 8);
  out += header;
  for (const std::string& c : cells)
    for (size_t i = 0; i < chars; ++i) {
      const char ch = i < c.size() ? c[i] : '\0';
      if (descr[1] == 'U') out += std::string{ch, '\0', '\0', '\0'};  // UTF-32LE
      else out += ch;
    }
  return out;
}

TEST(Pathfinder, ReleasedLayoutWrittenAndReadBack) {
  const auto dir = longseq_test::scratch_dir("pathfinder_layout");
  const PathfinderOptions o = pathfinder_options(32, "hard", 9);
  write_pathfinder_dir(dir + "/hard", o, 23, 20);  // two folders: 20 + 3 images
  const std::string meta = read_file(dir + "/hard/metadata/0.npy");
  const PathfinderSample s0 = draw_pathfinder(o, 0);
  EXPECT_EQ(meta.substr(0, meta.find('\n') + 1),
            "imgs/0 sample_0.png 0 " + std::to_string(s0.label) + " 1.0 14 4 2 0.5 1 1\n");
  EXPECT_EQ(read_file(dir + "/hard/metadata/1.npy").substr(0, 22), "imgs/1 sample_0.png 0 ");  // image 20
  // An 8-bit grayscale PNG (IHDR: bit depth 8, colour type 0; PNG spec sec. 11.2.2).
  const std::string png = read_file(dir + "/hard/imgs/0/sample_0.png");
  ASSERT_GT(png.size(), 26u);
  EXPECT_EQ(png.substr(1, 3), "PNG");
  EXPECT_EQ(png.substr(12, 4), "IHDR");
  EXPECT_EQ(static_cast<int>(png[24]), 8);
  EXPECT_EQ(static_cast<int>(png[25]), 0);
  const PathfinderImages back = read_pathfinder_dir(dir + "/hard", 1 << 30);
  const PathfinderImages gen = generate_pathfinder_images(o, 23);
  EXPECT_EQ(back.size, 32);
  EXPECT_EQ(back.labels, gen.labels);
  EXPECT_EQ(back.pixels, gen.pixels);
  EXPECT_EQ(read_pathfinder_dir(dir + "/hard", 10).count(), 10);
  // Through the config: data.path = the folder gives the splits of the generated set.
  Json d = validate_options({{"corpus", "pathfinder"}, {"path", dir + "/hard"}, {"pathfinder_seed", 9}}, data_schema(),
                            "data");
  EXPECT_EQ(read_classification_corpus(d).test.ids, pathfinder_splits(gen, 9).test.ids);
  EXPECT_THROW(write_pathfinder_dir(dir + "/hard", o, 5), Error);  // never over an existing data set
}

void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

TEST(Pathfinder, ReaderTakesReleaseFilesAndNamesBadOnes) {
  namespace fs = std::filesystem;
  const auto dir = longseq_test::scratch_dir("pathfinder_reader");
  fs::create_directories(dir + "/imgs/0");
  fs::create_directories(dir + "/metadata");
  std::vector<uint8_t> img(32 * 32, 0);
  for (int i = 0; i < 32; ++i) img[static_cast<size_t>(i * 33)] = static_cast<uint8_t>(8 * i);
  write_png_gray(dir + "/imgs/0/sample_0.png", img.data(), 32, 32);
  write_png_gray(dir + "/imgs/0/sample_1.png", img.data(), 32, 32);
  longseq_test::write_text(dir + "/imgs/0/sample_2.png", "");  // as pathfinder32/curv_baseline's sample_172
  // Text lines with the release's 11 columns; the empty image is skipped.
  longseq_test::write_text(dir + "/metadata/0.npy", "imgs/0 sample_0.png 0 1 1.0 14 4 2 0.5 1 1\n"
                                                    "imgs/0 sample_2.png 2 0 1.0 14 4 2 0.5 1 1\n"
                                                    "imgs/0 sample_1.png 1 0 1.0 14 4 2 0.5 1 1\n");
  // A real .npy string array ('<U21', 1 row x 11 columns), numbered after 0 and before 10.
  longseq_test::write_text(dir + "/metadata/2.npy",
                           npy("<U21", "(1, 11)", {"imgs/0", "sample_1.png", "1", "1", "1.0", "14", "4", "2", "0.5",
                                                   "1", "1"}, 21));
  // Bytes ('|S'), one line per element, sorted after 2.npy by number.
  longseq_test::write_text(dir + "/metadata/10.npy", npy("|S50", "(1,)", {"imgs/0 sample_0.png 0 0 1.0 14 4 2"}, 50));
  PathfinderImages r = read_pathfinder_dir(dir, 100);
  EXPECT_EQ(r.size, 32);
  EXPECT_EQ(r.skipped, 1);
  EXPECT_EQ(r.labels, (std::vector<int64_t>{1, 0, 1, 0}));
  EXPECT_TRUE(std::equal(img.begin(), img.end(), r.pixels.begin() + 3 * 1024));
  EXPECT_EQ(read_pathfinder_metadata(dir + "/metadata/2.npy")[0][1], "sample_1.png");
  longseq_test::write_text(dir + "/fortran.npy", npy("<U2", "(2, 2)", {"a", "b", "c", "d"}, 2, true));
  EXPECT_EQ(read_pathfinder_metadata(dir + "/fortran.npy")[0], (std::vector<std::string>{"a", "c"}));

  expect_error([&] { read_pathfinder_dir(dir + "/nowhere", 10); }, {"nowhere", "not a directory"});
  expect_error([&] { read_pathfinder_dir(dir + "/imgs", 10); }, {"imgs/metadata", "does not exist"});
  longseq_test::write_text(dir + "/obj.npy", npy("|O", "(1,)", {"x"}, 8));
  expect_error([&] { read_pathfinder_metadata(dir + "/obj.npy"); }, {"obj.npy", "'|O'"});
  longseq_test::write_text(dir + "/short.npy", npy("<U21", "(4, 11)", {"imgs/0"}, 21));
  expect_error([&] { read_pathfinder_metadata(dir + "/short.npy"); }, {"short.npy", "truncated"});
  longseq_test::write_text(dir + "/metadata/3.npy", "imgs/0 sample_9.png 9 1 1.0\n");
  expect_error([&] { read_pathfinder_dir(dir, 100); }, {"metadata/3.npy", "row 1", "sample_9.png", "does not exist"});
  longseq_test::write_text(dir + "/metadata/3.npy", "imgs/0 sample_1.png 1 yes 1.0\n");
  expect_error([&] { read_pathfinder_dir(dir, 100); }, {"metadata/3.npy", "row 1", "yes"});
  longseq_test::write_text(dir + "/metadata/3.npy", "imgs/0 sample_3.png 3 1\n");
  longseq_test::write_text(dir + "/imgs/0/sample_3.png", "\x89PNG not really");
  expect_error([&] { read_pathfinder_dir(dir, 100); }, {"sample_3.png", "not a readable PNG"});
  const std::string good = read_file(dir + "/imgs/0/sample_0.png");
  longseq_test::write_text(dir + "/imgs/0/sample_3.png", good.substr(0, good.size() / 2));  // truncated
  expect_error([&] { read_pathfinder_dir(dir, 100); }, {"sample_3.png", "not a readable PNG"});
  std::vector<uint8_t> wide(16 * 32, 0);
  write_png_gray(dir + "/imgs/0/sample_3.png", wide.data(), 16, 32);
  expect_error([&] { read_pathfinder_dir(dir, 100); }, {"sample_3.png", "16 x 32"});
}

Json tiny_pathfinder(int64_t steps) {
  return {{"model", {{"type", "encoder_classifier"}, {"vocab_size", 256}, {"num_classes", 2}, {"d_model", 16},
                     {"n_heads", 2}, {"n_layers", 1}, {"d_ff", 16}, {"pooling", "mean"}}},
          {"data", {{"corpus", "pathfinder"}, {"pathfinder_examples", 60}, {"pathfinder_difficulty", "baseline"}}},
          {"train", {{"steps", steps}, {"batch_size", 4}, {"seq_len", 1024}, {"lr", 1e-3}, {"warmup", 1},
                     {"eval_every", 2}, {"eval_batches", 1}, {"log_every", 1}, {"checkpoint_every", 2}}}};
}

TEST(PathfinderConfig, BadCombinationsNameTheKey) {
  RunConfig::from_json(tiny_pathfinder(3));
  const std::vector<std::pair<Json, std::string>> cases = {
      {{{"model", {{"vocab_size", 257}}}}, "set model.vocab_size to 256"},
      {{{"model", {{"num_classes", 10}}}}, "set model.num_classes to 2"},
      {{{"train", {{"seq_len", 1000}}}}, "train.seq_len = 1000 would truncate 32 x 32 images"},
      {{{"data", {{"pathfinder_size", 48}}}}, "not one of 32, 64, 128"},
      {{{"data", {{"pathfinder_difficulty", "easy"}}}}, "pathfinder_difficulty"},
      {{{"data", {{"tokenizer", "sentencepiece"}, {"spm_model", "x.model"}}}}, "data.tokenizer is not read"},
      {{{"model", {{"type", "decoder_lm"}}}}, "it needs model.type = encoder_classifier"},
  };
  longseq_test::expect_config_errors(tiny_pathfinder(3), cases);
}

TEST(PathfinderRun, TrainsThroughTheClassificationTask) {
  const auto dir = longseq_test::scratch_dir("pathfinder_run");
  auto cfg = RunConfig::from_json(tiny_pathfinder(3));
  const TrainResult r = train_run(&cfg, longseq_test::quiet(dir + "/run"));
  ASSERT_EQ(r.losses.size(), 3u);
  for (double l : r.losses) EXPECT_TRUE(std::isfinite(l));
  EXPECT_EQ(r.valid_fields["valid_examples"], 6);  // 10% of 60, every example in the final validation
}

}  // namespace pathfinder_test
