// Long Range Arena data (Tay et al. 2021, arXiv 2011.04006; docs/lra.md): ListOps generated as LRA's generator
// defines it (lra.md sec. 1), its tsv files read with LRA's tokenization, and the classification splits and batches
// the classification training task (train/classification_task.cpp) draws from.
//
// ListOps token ids (fixed and documented, unlike LRA's, which follow Python set order per process):
//   0 = pad, "0".."9" = 1..10, "[MIN" = 11, "[MAX" = 12, "[MED" = 13, "[SM" = 14, "X" (a "]") = 15, OOV = 16;
//   vocab_size 17.
#pragma once
#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "longseq/config.h"
#include "longseq/models.h"

namespace longseq {

// One split of a token classification task: N examples of variable length, stored end to end (N x 2000 ids padded
// would take 8x the memory of the trees themselves).
struct TokenExamples {
  std::vector<int16_t> ids;        // every example's token ids, one after another
  std::vector<int64_t> offsets{0};  // N + 1: example i is ids[offsets[i], offsets[i + 1])
  std::vector<int64_t> labels;      // N
  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  int64_t length(int64_t i) const { return offsets[static_cast<size_t>(i) + 1] - offsets[static_cast<size_t>(i)]; }
  void add(const int16_t* tokens, int64_t n, int64_t label);
};

struct ClassificationSplits {
  TokenExamples train, valid, test;
};

struct ClassificationBatch {
  torch::Tensor tokens;        // [B, T] long, right-padded with 0; T = the longest example, truncated to max_len
  torch::Tensor padding_mask;  // [B, T] bool, true at padding
  torch::Tensor labels;        // [B] long
  int64_t tokens_read = 0;     // non-pad tokens
};
// Examples `indices` of `split`, each truncated to max_len tokens (LRA: 2000) and right-padded with 0 to the batch's
// longest. Under the padding mask this equals LRA's padding to max_len (masked keys and pooling ignore the pad).
ClassificationBatch make_classification_batch(const TokenExamples& split, const std::vector<int64_t>& indices,
                                              int64_t max_len);

struct ClassificationScore {
  double loss = 0;      // mean cross-entropy, nats
  double accuracy = 0;  // argmax-correct / examples (lra.md sec. 3)
  int64_t correct = 0, examples = 0;
  double seconds = 0;
};
// The first `examples` of `split` (all of it if larger) in batches of `batch`, the last one smaller (LRA's eval
// drops the remainder of image and matching, lra.md sec. 4; here every example counts); in eval mode, no gradients.
ClassificationScore score_classifier(EncoderClassifierImpl& model, const TokenExamples& split, int64_t examples,
                                     int64_t batch, int64_t max_len);

// ---- ListOps (lra.md sec. 1) ----

constexpr int64_t kListOpsVocab = 17;
constexpr int64_t kListOpsClasses = 10;
constexpr int16_t kListOpsClose = 15, kListOpsOov = 16;

struct ListOpsOptions {
  int64_t examples = 100000;  // split 96/2/2 as LRA's 96,000 / 2,000 / 2,000
  uint64_t seed = 1;
  int64_t min_length = 500;   // accept a tree iff min_length < length < max_length (LRA: 500, 2000)
  int64_t max_length = 2000;
  int64_t max_depth = 10, max_args = 10;  // LRA's generator
};
// The split sizes of `examples` (LRA: 100,000 -> 96,000 / 2,000 / 2,000).
void listops_split_sizes(int64_t examples, int64_t& train, int64_t& valid, int64_t& test);
// Distinct trees drawn as LRA's generator draws them, seeded (LRA's is not), split in drawing order; ids as above.
// Throws Error when the length window admits too few distinct trees to fill the splits.
ClassificationSplits generate_listops(const ListOpsOptions& options);
// The LRA text form of a tree given by its ids: [MAX 2 9] -> "( ( ( [MAX 2 ) 9 ) ] )".
std::string listops_source(const int16_t* ids, int64_t n);
// LRA's tokenization of a Source: "]" -> "X", "(" and ")" deleted, split on whitespace; ids as above (OOV 16).
std::vector<int16_t> listops_tokenize(const std::string& source);
// The value of a Source in the text form, parsed from its parentheses (the tests' oracle, independent of the
// generator): MIN, MAX, MED = int(np.median), SM = sum mod 10. Throws Error on malformed text.
int64_t listops_evaluate(const std::string& source);
// The token names of ids 1..16, in id order ("0".."9", "[MIN", "[MAX", "[MED", "[SM", "X", "<oov>").
const std::vector<std::string>& listops_vocabulary();

// A {task}_{split}.tsv file: header "Source<TAB>Target", then one example a line, target 0..9. A missing file
// is an Error naming the path; a malformed line names the file and the line.
TokenExamples read_listops_tsv(const std::string& path);
// Writes a split as such a file (the generator's output in LRA's layout).
void write_listops_tsv(const std::string& path, const TokenExamples& split);

// ---- Pathfinder and Path-X (lra.md sec. 1; generator in data/lra_pathfinder.cpp) ----
// Tokens are the 8-bit pixels of a W x W grayscale image read row by row (vocab 256, no +1): as in LRA, a black
// pixel is id 0, which the classifier masks like padding (lra.md sec. 4).

constexpr int64_t kPathfinderVocab = 256;
constexpr int64_t kPathfinderClasses = 2;

// snakes2.py's parameters (drewlinsley/pathfinder; values from the docstrings of LRA's data/pathfinder.py).
// Lengths are in output pixels.
struct PathfinderOptions {
  int64_t size = 32;                    // window W
  int64_t padding = 1;                  // no stroke within this many pixels of the border
  int64_t paddle_length = 2;
  double paddle_thickness = 0.5;
  std::vector<int64_t> margins = {1};   // paddle_margin_list: one drawn per image; the no-touch distance
  double marker_radius = 1.5;
  int64_t contour_length = 14;          // paddles per target contour (difficulty: 6, 9, 14)
  int64_t antialias_scale = 2;          // strokes and discs drawn this many times finer, then box-filtered
  int64_t seed_distance = 7;            // between the two target contours' seeds
  double continuity = 1.0;              // turn weight cos^2(min(continuity |dtheta|, pi/2))
  int64_t distractor_length = 4;        // paddles per distractor contour
  int64_t num_distractor_snakes = 5;
  double snake_contrast = 2.0, paddle_contrast = 0.75;  // targets: product; distractors: snake_contrast (snakes2)
  int64_t max_paddle_retrial = 2, max_distractor_contour_retrial = 4;  // snakes2_wrapper defaults
  uint64_t seed = 1;
};
// LRA's parameters for a window of `size` (32, 64 or 128) and a difficulty (baseline, intermediate, hard =
// contour_length 6, 9, 14; distractors as LRA's formulas at that length). Throws Error naming the allowed values.
PathfinderOptions pathfinder_options(int64_t size, const std::string& difficulty, uint64_t seed = 1);

struct PathfinderSample {
  std::vector<uint8_t> pixels;  // [W * W] row-major
  int64_t label = 0;            // 1: both markers on target contour A
  // (y, x) in pixels (pixel (r, c) spans [r, r + 1) x [c, c + 1)): [0] at A's seed end, [1] at the far end of A
  // (label 1) or of B (label 0).
  std::array<std::array<double, 2>, 2> markers{};
  // Every contour drawn, as its vertices (y, x): [0] = A, [1] = B, then the distractors that found room.
  std::vector<std::vector<std::array<double, 2>>> contours;
  int64_t margin = 0;           // the margin drawn for this image
  int64_t redraws = 0;          // whole-image redraws before this one succeeded
};
// Image `index` of the data set named by options.seed (each image has its own random stream: any subset can be
// drawn alone, in parallel, in any order).
PathfinderSample draw_pathfinder(const PathfinderOptions& options, int64_t index);

// Images end to end ([N * W * W] bytes) with their labels, in index order.
struct PathfinderImages {
  int64_t size = 0;  // W
  std::vector<uint8_t> pixels;
  std::vector<int64_t> labels;
  int64_t skipped = 0;  // zero-length image files skipped by the reader
  int64_t count() const { return static_cast<int64_t>(labels.size()); }
};
PathfinderImages generate_pathfinder_images(const PathfinderOptions& options, int64_t examples);
// 80/10/10 of a seeded shuffle of the images (LRA: its TFDS build order, not reproducible; S4: seeded); the same
// images in the same order give the same splits, so written files read back as the generated set.
ClassificationSplits pathfinder_splits(const PathfinderImages& images, uint64_t seed);

// The released layout: DIR/imgs/<k>/sample_<i>.png (8-bit grayscale) and DIR/metadata/<k>.npy, text lines
// "imgs/<k> sample_<i>.png <i> <label> <continuity> <contour_length> <distractor_length> <paddle_length>
// <paddle_thickness> <margin> 1", `per_folder` images per k (the release: 1,000).
void write_pathfinder_dir(const std::string& dir, const PathfinderOptions& options, int64_t examples,
                          int64_t per_folder = 1000);
// Reads that layout (ours or lra_release's pathfinder{32,64,128,256}/<difficulty>): metadata files in numeric
// order, text lines or a NumPy string array, label = column 3; zero-length images skipped; at most `max_examples`
// images. Errors name the file: a missing directory, metadata or image, a bad line, a corrupt PNG, a size change.
PathfinderImages read_pathfinder_dir(const std::string& dir, int64_t max_examples);
// The rows of one metadata file, each split into columns (text lines or an .npy string array).
std::vector<std::vector<std::string>> read_pathfinder_metadata(const std::string& path);

// 8-bit grayscale PNG through libpng's simplified API; errors name the path.
void write_png_gray(const std::string& path, const uint8_t* pixels, int64_t width, int64_t height);
std::vector<uint8_t> read_png_gray(const std::string& path, int64_t& width, int64_t& height);

// data.corpus pathfinder: data.path a directory of the layout above, or empty = generated with data.pathfinder_*.
ClassificationSplits read_pathfinder_corpus(const Json& data_cfg, bool quiet = true);

// The splits a config's data section names: data.corpus listops with data.path a directory of basic_train.tsv,
// basic_val.tsv and basic_test.tsv, or data.path empty = generated with the data.listops_* keys.
ClassificationSplits read_classification_corpus(const Json& data_cfg, bool quiet = true);
// data.corpus values that are classification corpora (model.type encoder_classifier).
inline bool is_classification_corpus(const std::string& corpus) {
  return corpus == "listops" || corpus == "pathfinder";
}
// The generator options of a data section (data.listops_*).
ListOpsOptions listops_options(const Json& data_cfg);

}  // namespace longseq
