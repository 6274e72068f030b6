// Long Range Arena data (Tay et al. 2021, arXiv 2011.04006; docs/lra.md): ListOps generated as LRA's generator
// defines it (lra.md sec. 1), its tsv files read with LRA's tokenization; the Text (IMDB), Image (CIFAR-10) and
// Retrieval (AAN) files read as LRA tokenizes them; Pathfinder images drawn as snakes2 draws them or read from
// its released folders; and the classification splits and batches the classification
// training task (train/classification_task.cpp) draws from.
//
// ListOps token ids (fixed and documented, unlike LRA's, which follow Python set order per process):
//   0 = pad, "0".."9" = 1..10, "[MIN" = 11, "[MAX" = 12, "[MED" = 13, "[SM" = 14, "X" (a "]") = 15, OOV = 16;
//   vocab_size 17.
#pragma once
#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "longseq/config.h"
#include "longseq/models.h"

namespace longseq {

// One split of a token classification task: N examples of variable length, stored end to end (N x 2000 ids padded
// would take 8x the memory of the trees themselves).
struct TokenExamples {
  std::vector<int16_t> ids;        // every document's token ids, one after another
  std::vector<int64_t> offsets{0};  // document d is ids[offsets[d], offsets[d + 1]); example i is document i ...
  std::vector<int64_t> labels;      // N
  // ... unless the examples are pairs (LRA Retrieval): example i is documents pairs[2i] and pairs[2i + 1], so a
  // document in many pairs is stored once (AAN's papers recur across its pairs).
  std::vector<int64_t> pairs;
  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  bool paired() const { return !pairs.empty(); }
  int64_t document(int64_t i, int side = 0) const { return paired() ? pairs[static_cast<size_t>(2 * i + side)] : i; }
  const int16_t* tokens(int64_t i, int side = 0) const {
    return ids.data() + offsets[static_cast<size_t>(document(i, side))];
  }
  int64_t length(int64_t i, int side = 0) const {
    const auto d = static_cast<size_t>(document(i, side));
    return offsets[d + 1] - offsets[d];
  }
  void add(const int16_t* tokens, int64_t n, int64_t label);
  // Paired examples: a document is appended once (its index returned), then pairs name two document indices.
  int64_t add_document(const int16_t* tokens, int64_t n);
  void add_pair(int64_t a_doc, int64_t b_doc, int64_t label);
  void keep_first(int64_t n);  // the first n examples only (n <= size())
};

struct ClassificationSplits {
  TokenExamples train, valid, test;
  bool valid_is_test = false;  // IMDB: no validation split, LRA validates on the test split (lra.md sec. 4)
};

struct ClassificationBatch {
  torch::Tensor tokens;        // [B, T] long, right-padded with 0; T = the longest example, truncated to max_len
  torch::Tensor padding_mask;  // [B, T] bool, true at padding
  torch::Tensor labels;        // [B] long
  int64_t tokens_read = 0;     // non-pad tokens
  torch::Tensor tokens2, padding_mask2;  // [B, T2]: the second documents of paired examples, else undefined
};
// Examples `indices` of `split`, each truncated to max_len tokens (LRA: 2000) and right-padded with 0 to the batch's
// longest. Under the padding mask this equals LRA's padding to max_len (masked keys and pooling ignore the pad).
// Paired examples give both documents, each truncated to max_len (LRA Retrieval: 4,000 per document).
ClassificationBatch make_classification_batch(const TokenExamples& split, const std::vector<int64_t>& indices,
                                              int64_t max_len);
// The model's logits [B, classes] for a batch: forward, or forward_pair for paired examples.
torch::Tensor classify_batch(EncoderClassifierImpl& model, const ClassificationBatch& batch);

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

// ---- Text, Image, Retrieval: LRA's byte and pixel tasks read from the files a user downloads (lra.md sec. 1) ----

constexpr int64_t kByteVocab = 257;   // Text, Retrieval: byte + 1, pad 0 (tfds ByteTextEncoder)
constexpr int64_t kPixelVocab = 256;  // Image: the gray value itself, 0 included (LRA masks it as padding)
constexpr int64_t kCifarClasses = 10;
constexpr int64_t kAanDocumentTokens = 4000;  // LRA Retrieval: the first 10,000 bytes, ids truncated to 4,000

// A classification corpus read from files: its fixed vocabulary and classes, and what data.path must hold.
struct FileCorpusInfo {
  const char* name;  // data.corpus
  int64_t vocab, classes;
  bool pairs;         // two documents per example (model.dual_encoder)
  const char* files;  // for messages: what data.path holds
};
// imdb, cifar10 or aan; nullptr for other names.
const FileCorpusInfo* find_file_corpus(const std::string& corpus);

// ids = byte + 1 of `text` (tfds ByteTextEncoder, pad 0), the first max_tokens of them (-1 = all).
std::vector<int16_t> byte_ids(std::string_view text, int64_t max_tokens = -1);

// IMDB (data.corpus imdb): `dir` is aclImdb/ of aclImdb_v1.tar.gz with {train,test}/{pos,neg}/*.txt. A review is
// its file's bytes with ASCII whitespace stripped at both ends (tfds imdb_reviews), ids byte + 1, label pos 1,
// neg 0; the classes alternate (neg, pos, ...) in file-name order. Validation = test, as LRA (valid_is_test).
ClassificationSplits read_imdb(const std::string& dir);

// CIFAR-10's binary version (data.corpus cifar10): records of 1 label byte + 3,072 bytes (R, G, B planes of 32x32,
// row-major). TensorFlow's rgb_to_grayscale in float32 (lra.md sec. 1): each channel times float32(1/255), then
// 0.2989 r + 0.5870 g + 0.1140 b summed left to right, times 255.5, truncated (no fused multiply-add).
uint8_t lra_grayscale(uint8_t r, uint8_t g, uint8_t b);
// One batch file: each image's 1,024 gray values row-major (vocab 256, no +1), labels 0..9. Throws Error naming
// the path for a missing file, a size that is not a whole number of records, or a label > 9.
TokenExamples read_cifar10_bin(const std::string& path);
// `dir` = cifar-10-batches-bin: train = the first 90% of data_batch_1..5 in file order (45,000), valid = the last
// 10% (5,000), test = test_batch.bin (10,000); LRA takes TFDS's train[:90%] / train[90%:] / test.
ClassificationSplits read_cifar10(const std::string& dir);

// An AAN pairs file (data.corpus aan): no header, five tab-separated columns label (a float, 0 or 1), id1, id2,
// text1, text2, no quoting; each text -> its first 10,000 bytes -> ids byte + 1 -> the first 4,000. Errors name
// the file and the line.
TokenExamples read_aan_tsv(const std::string& path);
// `dir` holds new_aan_pairs.train.tsv, new_aan_pairs.eval.tsv and new_aan_pairs.test.tsv (lra_release/tsv_data).
ClassificationSplits read_aan(const std::string& dir);
// ---- Pathfinder and Path-X (lra.md sec. 1; generator in data/lra_pathfinder.cpp) ----
// Tokens are the 8-bit pixels of a W x W grayscale image read row by row (vocab 256, no +1): as in LRA, a black
// pixel is id 0, which the classifier masks like padding (lra.md sec. 4).

constexpr int64_t kPathfinderVocab = kPixelVocab;  // the pixel value itself, as Image
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
// basic_val.tsv and basic_test.tsv, or data.path empty = generated with the data.listops_* keys; pathfinder as
// read_pathfinder_corpus; imdb, cifar10 and aan from the directory data.path.
ClassificationSplits read_classification_corpus(const Json& data_cfg, bool quiet = true);
// data.corpus values that are classification corpora (model.type encoder_classifier).
inline bool is_classification_corpus(const std::string& corpus) {
  return corpus == "listops" || corpus == "pathfinder" || find_file_corpus(corpus) != nullptr;
}
// The generator options of a data section (data.listops_*).
ListOpsOptions listops_options(const Json& data_cfg);

}  // namespace longseq
