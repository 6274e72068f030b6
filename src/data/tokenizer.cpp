#include <dlfcn.h>

#include "longseq/common.h"
#include "longseq/data.h"
#include "longseq/runtime.h"

namespace longseq {

namespace {

class ByteTokenizer : public Tokenizer {
 public:
  int64_t vocab_size() const override { return 256; }
  std::vector<int64_t> encode(const std::string& text) const override {
    std::vector<int64_t> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }
  std::string decode(const std::vector<int64_t>& ids) const override {
    std::string out;
    out.reserve(ids.size());
    for (auto id : ids) {
      if (id < 0 || id > 255) throw Error("byte tokenizer: id " + std::to_string(id) + " is not a byte");
      out.push_back(static_cast<char>(static_cast<unsigned char>(id)));
    }
    return out;
  }
  std::string name() const override { return "byte"; }
};

// The SentencePiece module's C entry points (see sentencepiece_shim.cpp).
struct SpmApi {
  void* (*load)(const char*, char*, size_t);
  void (*free_model)(void*);
  int (*vocab)(void*);
  int (*encode)(void*, const char*, size_t, int**, size_t*, char*, size_t);
  int (*decode)(void*, const int*, size_t, char**, size_t*, char*, size_t);
  void (*free_buffer)(void*);
  int (*train)(const char*, char*, size_t);
};

// The module binds to its own protobuf (sentencepiece_shim.cpp): RTLD_DEEPBIND, or under
// AddressSanitizer, which refuses RTLD_DEEPBIND, a link namespace of its own (the module is
// built uninstrumented for that, CMakeLists.txt).
void* open_spm_module(const std::string& path) {
#ifdef __SANITIZE_ADDRESS__
  return dlmopen(LM_ID_NEWLM, path.c_str(), RTLD_NOW | RTLD_LOCAL);
#else
  return dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
#endif
}

// Loads liblongseq_spm.so from the directory of liblongseq.so (build tree or
// install prefix), falling back to the loader's search path.
const SpmApi& spm_api() {
  static SpmApi api = [] {
    Dl_info info;
    std::string dir;
    if (dladdr(reinterpret_cast<void*>(&make_byte_tokenizer), &info) && info.dli_fname) {
      dir = info.dli_fname;
      dir = dir.substr(0, dir.find_last_of('/') + 1);
    }
    void* lib = nullptr;
    for (const std::string& path : {dir + "liblongseq_spm.so", std::string("liblongseq_spm.so")}) {
      lib = open_spm_module(path);
      if (lib) break;
    }
    if (!lib) throw Error(std::string("cannot load the SentencePiece module liblongseq_spm.so: ") + dlerror());
    SpmApi a;
    auto sym = [&](const char* name) {
      void* p = dlsym(lib, name);
      if (!p) throw Error(std::string("liblongseq_spm.so lacks ") + name);
      return p;
    };
    a.load = reinterpret_cast<decltype(a.load)>(sym("lsq_spm_load"));
    a.free_model = reinterpret_cast<decltype(a.free_model)>(sym("lsq_spm_free"));
    a.vocab = reinterpret_cast<decltype(a.vocab)>(sym("lsq_spm_vocab"));
    a.encode = reinterpret_cast<decltype(a.encode)>(sym("lsq_spm_encode"));
    a.decode = reinterpret_cast<decltype(a.decode)>(sym("lsq_spm_decode"));
    a.free_buffer = reinterpret_cast<decltype(a.free_buffer)>(sym("lsq_spm_free_buffer"));
    a.train = reinterpret_cast<decltype(a.train)>(sym("lsq_spm_train"));
    return a;
  }();
  return api;
}

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& path) : path_(path) {
    if (!path_exists(path)) throw Error("SentencePiece model " + path + " does not exist");
    char err[512] = {0};
    handle_ = spm_api().load(path.c_str(), err, sizeof err);
    if (!handle_) throw Error("cannot load SentencePiece model " + path + ": " + err);
    vocab_ = spm_api().vocab(handle_);
  }
  ~SentencePieceTokenizer() override { spm_api().free_model(handle_); }
  SentencePieceTokenizer(const SentencePieceTokenizer&) = delete;
  SentencePieceTokenizer& operator=(const SentencePieceTokenizer&) = delete;

  int64_t vocab_size() const override { return vocab_; }
  std::vector<int64_t> encode(const std::string& text) const override {
    char err[512] = {0};
    int* ids = nullptr;
    size_t n = 0;
    if (spm_api().encode(handle_, text.data(), text.size(), &ids, &n, err, sizeof err) != 0)
      throw Error(std::string("SentencePiece encode failed: ") + err);
    std::vector<int64_t> out(ids, ids + n);
    spm_api().free_buffer(ids);
    return out;
  }
  std::string decode(const std::vector<int64_t>& ids) const override {
    std::vector<int> v;
    for (auto id : ids) {
      if (id < 0 || id >= vocab_) throw Error("SentencePiece: id " + std::to_string(id) + " is outside the vocabulary");
      v.push_back(static_cast<int>(id));
    }
    char err[512] = {0};
    char* text = nullptr;
    size_t len = 0;
    if (spm_api().decode(handle_, v.data(), v.size(), &text, &len, err, sizeof err) != 0)
      throw Error(std::string("SentencePiece decode failed: ") + err);
    std::string out(text, len);
    spm_api().free_buffer(text);
    return out;
  }
  std::string name() const override { return "sentencepiece:" + path_; }

 private:
  std::string path_;
  void* handle_ = nullptr;
  int64_t vocab_ = 0;
};

}  // namespace

std::unique_ptr<Tokenizer> make_byte_tokenizer() { return std::make_unique<ByteTokenizer>(); }

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& model_path) {
  return std::make_unique<SentencePieceTokenizer>(model_path);
}

void train_sentencepiece(const std::string& input_file, const std::string& model_prefix,
                         int64_t vocab_size, const std::string& model_type) {
  train_sentencepiece(std::vector<std::string>{input_file}, model_prefix, vocab_size, model_type);
}

void train_sentencepiece(const std::vector<std::string>& inputs, const std::string& model_prefix, int64_t vocab_size,
                         const std::string& model_type) {
  if (inputs.empty()) throw Error("SentencePiece training needs at least one input file");
  std::string input_file;  // SentencePiece's --input takes a comma-separated list: one vocabulary over all files
  for (const auto& f : inputs) {
    if (!path_exists(f)) throw Error("SentencePiece training input " + f + " does not exist");
    if (f.find_first_of(", \t\n") != std::string::npos)
      throw Error("SentencePiece training input \"" + f + "\": a path with a comma or whitespace cannot be passed "
                  "to SentencePiece's trainer; rename or link it");
    input_file += (input_file.empty() ? "" : ",") + f;
  }
  // Lossless: decode(encode(text)) == text for valid UTF-8, so bits per byte
  // counts every byte of the text and generated text keeps its layout. The
  // identity rule keeps NFKC from rewriting characters; spaces are neither
  // trimmed nor collapsed and no dummy space is prepended; characters outside
  // the vocabulary (newline among them: training reads one line at a time)
  // become byte pieces. Whitespace-only pieces let indentation be one piece.
  const std::string args = "--input=" + input_file + " --model_prefix=" + model_prefix +
                           " --vocab_size=" + std::to_string(vocab_size) + " --model_type=" + model_type +
                           " --normalization_rule_name=identity --remove_extra_whitespaces=false"
                           " --add_dummy_prefix=false --allow_whitespace_only_pieces=true"
                           " --character_coverage=1.0 --byte_fallback=true --minloglevel=2"
                           " --num_threads=1 --input_sentence_size=2000000 --shuffle_input_sentence=false";
  char err[512] = {0};
  if (spm_api().train(args.c_str(), err, sizeof err) != 0) throw Error(std::string("SentencePiece training failed: ") + err);
}

std::unique_ptr<Tokenizer> make_tokenizer(const Json& data_cfg) {
  if (data_cfg.at("tokenizer") == "sentencepiece")
    return load_sentencepiece(data_cfg.at("spm_model").get<std::string>());
  return make_byte_tokenizer();
}

}  // namespace longseq
