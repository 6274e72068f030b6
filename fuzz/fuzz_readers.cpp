// libFuzzer target: the corpus readers. The input describes a small directory tree
// and the reader that reads it, in a line format that seeds can be written in:
//
//   wikitext103 [SUBPATH]        the reader (data.corpus) and where data.path points
//   == dir PATH                  a directory
//   == file PATH                 a file; the lines up to the next "== " are its text
//   == link PATH -> TARGET       a symbolic link (relative target)
//   == fifo PATH                 a named pipe (reading one would block)
//
// Paths stay inside a scratch directory. Every reader must return the text or fail
// with a longseq::Error: never block, crash or throw anything else.
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cstdlib>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "longseq/common.h"
#include "longseq/data.h"

using namespace longseq;
namespace fs = std::filesystem;

namespace {

std::string scratch;  // the scratch directory, made once

// A relative path of [A-Za-z0-9._-] components without "." or "..", at most 4 deep.
std::string clean_path(const std::string& raw) {
  std::string out, part;
  int depth = 0;
  auto flush = [&] {
    if (!part.empty() && part != "." && part != ".." && depth < 4) {
      out += (out.empty() ? "" : "/") + part.substr(0, 40);
      ++depth;
    }
    part.clear();
  };
  for (char c : raw) {
    if (c == '/') flush();
    else if (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-') part += c;
  }
  flush();
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  char tmpl[] = "/tmp/longseq_fuzz_readers_XXXXXX";
  if (!mkdtemp(tmpl)) abort();
  scratch = tmpl;
  std::atexit([] {
    std::error_code ec;
    fs::remove_all(scratch, ec);
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string root = scratch + "/t";
  std::error_code ec;
  fs::remove_all(root, ec);
  fs::create_directory(root, ec);
  std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
  std::string line, corpus, sub;
  std::getline(in, line);
  std::istringstream head(line);
  head >> corpus >> sub;
  const char* readers[] = {"text", "enwik8", "text8", "wikitext103", "pg19", "pydoc"};
  bool known = false;
  for (const char* r : readers) known = known || corpus == r;
  if (!known) corpus = "text";
  std::ofstream file;  // the file being written, if any
  int entries = 0;
  while (std::getline(in, line)) {
    if (line.rfind("== ", 0) != 0) {
      if (file.is_open()) file << line << '\n';
      continue;
    }
    file.close();
    if (++entries > 16) break;
    std::istringstream cmd(line.substr(3));
    std::string kind, path, arrow, target;
    cmd >> kind >> path >> arrow >> target;
    const std::string rel = clean_path(path);
    if (rel.empty()) continue;
    const fs::path p = fs::path(root) / rel;
    fs::create_directories(p.parent_path(), ec);
    if (kind == "dir") fs::create_directories(p, ec);
    else if (kind == "file") file.open(p, std::ios::binary);
    else if (kind == "link") ::symlink(clean_path(target).c_str(), p.c_str());
    else if (kind == "fifo") ::mkfifo(p.c_str(), 0600);
  }
  file.close();
  const std::string where = clean_path(sub);
  Json cfg = {{"corpus", corpus}, {"path", where.empty() ? root : root + "/" + where}, {"tokenizer", "byte"},
              {"spm_model", ""}};
  try {
    const TextSplits s = read_corpus(cfg);
    // The byte tokenizer gives every text back byte for byte.
    auto tok = make_byte_tokenizer();
    for (const std::string* t : {&s.train, &s.valid, &s.test})
      if (tok->decode(tok->encode(*t)) != *t) __builtin_trap();
  } catch (const Error&) {
  }
  return 0;
}
