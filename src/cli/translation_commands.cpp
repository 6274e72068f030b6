// The translation subcommands: eval on a translation run, translate, average (see commands.h).
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "commands.h"
#include "longseq/common.h"
#include "longseq/runtime.h"
#include "longseq/train.h"

namespace longseq {

void write_translation_corpus(const Json& data_cfg, const std::string& out_dir) {
  Json d = validate_options(data_cfg, data_schema(), "data");
  const TranslationSplits s = read_translation_corpus(d);
  if (path_exists(out_dir)) throw Error("corpus: " + out_dir + " already exists; choose a new --out");
  if (::mkdir(out_dir.c_str(), 0755) != 0) throw Error("corpus: cannot create " + out_dir);
  auto write = [&](const std::string& split, const ParallelText& p) {
    std::string src, tgt;
    for (size_t i = 0; i < p.source.size(); ++i) src += p.source[i] + "\n", tgt += p.target[i] + "\n";
    write_file_atomic(out_dir + "/" + split + "." + d["source_lang"].get<std::string>(), src);
    write_file_atomic(out_dir + "/" + split + "." + d["target_lang"].get<std::string>(), tgt);
    std::printf("%s: %zu pairs\n", split.c_str(), p.source.size());
  };
  write("train", s.train);
  write("valid", s.valid);
  write("test", s.test);
}

bool is_translation_run(const std::string& run_dir) {
  const std::string config_path = run_dir + "/config.json";
  if (!path_exists(config_path)) return false;
  return load_run_config(config_path).model["type"] == "encoder_decoder";
}

void eval_translation(const std::string& run_dir, const std::string& split, int64_t bleu_sentences,
                      const DecodeOptions& decode, bool as_json, const std::string& hypotheses_out) {
  auto run = load_translation_run(run_dir);
  const TranslationSplits splits = read_translation_corpus(run.config.data);
  const ParallelText& pairs = split == "train" ? splits.train : split == "valid" ? splits.valid : splits.test;
  if (pairs.source.empty())
    throw Error("eval: the " + split + " split of " + run_dir + "'s corpus is empty (data.corpus parallel reads "
                "test.<lang> from data.path when it exists)");
  std::fprintf(stderr, "decoding %zu sentences of the %s split ...\n",
               bleu_sentences > 0 ? std::min<size_t>(bleu_sentences, pairs.source.size()) : pairs.source.size(),
               split.c_str());
  const TranslationEval e = evaluate_translation(*run.model, *run.tokenizer, run.ids, pairs,
                                                 run.config.train["batch_tokens"], bleu_sentences, decode);
  if (!hypotheses_out.empty()) {
    std::string text;
    for (const auto& h : e.hypotheses) text += h + "\n";
    write_file_atomic(hypotheses_out, text);
  }
  const std::string how = decode.beam == 1 ? "greedy" : "beam " + std::to_string(decode.beam) + ", alpha " +
                                                            std::to_string(decode.alpha).substr(0, 4);
  if (as_json) {
    Json j{{"split", split}, {"loss", e.loss}, {"ppl", e.ppl}, {"targets", e.targets}, {"pairs", e.pairs},
           {"bleu", e.bleu.score}, {"bleu_sentences", e.bleu_sentences}, {"bleu_signature", e.bleu.signature},
           {"bleu_summary", e.bleu.summary()}, {"decoding", how}, {"seconds", e.seconds}};
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("%s: loss %.4f nats/token, perplexity %.3f (%lld target tokens, %lld pairs)\n", split.c_str(), e.loss,
              e.ppl, static_cast<long long>(e.targets), static_cast<long long>(e.pairs));
  std::printf("%s (%s, %lld sentences, %.1f s)\n%s\n", e.bleu.summary().c_str(), how.c_str(),
              static_cast<long long>(e.bleu_sentences), e.seconds, e.bleu.signature.c_str());
}

void translate_command(const std::string& run_dir, const std::string& input, const std::string& output,
                       const DecodeOptions& decode, bool quiet) {
  auto run = load_translation_run(run_dir);
  std::vector<std::string> sources;
  if (input.empty() || input == "-") {
    std::string line;
    while (std::getline(std::cin, line)) sources.push_back(rstrip_unicode(line));
  } else {
    sources = read_bleu_lines(input);  // split on '\n', rstripped: the lines sacreBLEU would score against
  }
  Progress progress("translate", static_cast<int64_t>(sources.size()));
  auto out = translate_sentences(*run.model, *run.tokenizer, run.ids, sources, decode, [&](int64_t done) {
    if (!quiet) progress.update(done, "");
  });
  if (!quiet) progress.finish();
  std::string text;
  for (const auto& s : out) text += s + "\n";
  if (output.empty() || output == "-") {
    std::fwrite(text.data(), 1, text.size(), stdout);
  } else {
    write_file_atomic(output, text);
  }
}

void average_command(const std::string& run_dir, int64_t last, const std::string& out_dir) {
  const std::string config_path = run_dir + "/config.json";
  if (!path_exists(config_path)) throw Error(run_dir + " is not a run directory: it has no config.json");
  if (path_exists(out_dir)) throw Error("average: " + out_dir + " already exists; choose a new --out");
  const auto kept = kept_checkpoints(run_dir);
  if (static_cast<int64_t>(kept.size()) < last)
    throw Error("average: " + run_dir + " keeps " + std::to_string(kept.size()) + " checkpoints in checkpoints/, "
                "fewer than --last " + std::to_string(last) + " (train.keep_checkpoints sets how many a run keeps)");
  std::vector<std::string> paths;
  std::string steps;
  for (size_t i = kept.size() - static_cast<size_t>(last); i < kept.size(); ++i) {
    paths.push_back(kept[i].second);
    if (!steps.empty()) steps += ',';
    steps += std::to_string(kept[i].first);
  }
  TensorFile mean = average_weights(paths);
  mean.metadata["steps"] = steps;
  // A run directory of its own, so eval, translate and generate read it as they read the run.
  if (::mkdir(out_dir.c_str(), 0755) != 0) throw Error("average: cannot create " + out_dir);
  write_file_atomic(out_dir + "/config.json", read_file(config_path));
  if (path_exists(run_dir + "/tokenizer.model"))
    write_file_atomic(out_dir + "/tokenizer.model", read_file(run_dir + "/tokenizer.model"));
  save_safetensors(out_dir + "/model.safetensors", mean);
  std::printf("wrote %s/model.safetensors: the mean of the checkpoints of steps %s\n", out_dir.c_str(), steps.c_str());
}

}  // namespace longseq
