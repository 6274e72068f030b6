// The `longseq` program: a thin layer over the library.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <iostream>
#include <thread>

#include "commands.h"
#include "longseq/bench.h"
#include "longseq/blocks.h"
#include "longseq/bleu.h"
#include "longseq/common.h"
#include "longseq/config.h"
#include "longseq/generate.h"
#include "longseq/plot.h"
#include "longseq/registry.h"
#include "longseq/distributed.h"
#include "longseq/runtime.h"
#include "longseq/train.h"

using namespace longseq;

namespace {

// --set section.key=value: value is JSON when it parses as JSON, else a string.
Json apply_overrides(Json cfg, const std::vector<std::string>& sets) {
  for (const auto& s : sets) {
    const auto eq = s.find('='), dot = s.find('.');
    if (eq == std::string::npos || dot == std::string::npos || dot > eq)
      throw Error("--set takes section.key=value (e.g. train.steps=100), got \"" + s + "\"");
    const std::string section = s.substr(0, dot);
    if (section != "model" && section != "data" && section != "train")
      throw Error("--set " + s + ": unknown section " + section + "; valid sections: model, data, train");
    const Json one = parse_option_assignment(s.substr(dot + 1), "--set", section + ".");
    cfg[section].update(one);
  }
  return cfg;
}

// --mixer-option key=value (repeatable) -> {"key": value, ...}.
Json mixer_overrides(const std::vector<std::string>& sets) {
  Json out = Json::object();
  for (const auto& s : sets) out.update(parse_option_assignment(s, "--mixer-option"));
  return out;
}

void print_info(bool markdown) {
  std::printf("longseq %s\n\nMixers (model.mixer or model.layers entries):\n\n", "0.1.0");
  for (const auto& m : mixer_registry()) {
    std::printf("## %s\n%s\n(%s)\n", m.name.c_str(), m.summary.c_str(), m.citation.c_str());
    std::printf("causal: %s, bidirectional: %s, strictly causal: %s, streams: %s, attention core (sparse_qkv.core): %s\n\n",
                m.supports_causal ? "yes" : "no", m.supports_bidirectional ? "yes" : "no",
                m.strictly_causal ? "yes" : ("no (strict limit: " + m.strictly_causal_options.dump() + ")").c_str(),
                m.streams ? "yes" : "no", m.attends ? "yes" : "no");
    if (!m.left_padding_changes.empty()) std::printf("left padding changes outputs: %s\n\n", m.left_padding_changes.c_str());
    std::printf("%s\n", schema_markdown(m.schema).c_str());
  }
  std::printf("Block kinds (model.block or {\"block\": ...} entries of model.layers):\n\n");
  for (const auto& b : block_registry()) {
    std::printf("## %s\n%s\n(%s)\n", b.name.c_str(), b.summary.c_str(), b.citation.c_str());
    std::printf("runs the layer's mixer: %s, causal: %s, bidirectional: %s, streams: %s, reversible: %s\n\n",
                b.uses_mixer ? "yes" : "no", b.supports_causal ? "yes" : "no", b.supports_bidirectional ? "yes" : "no",
                b.uses_mixer ? "as its mixer" : b.streams ? "yes" : "no",
                b.not_reversible.empty() ? "yes" : ("no (" + b.not_reversible + ")").c_str());
    if (!b.schema.empty()) std::printf("%s\n", schema_markdown(b.schema).c_str());
  }
  std::printf("Feed-forward kinds (model.ff, or \"ff\" in a model.layers mixer entry):\n\n");
  for (const auto& f : ffn_registry()) {
    std::printf("## %s\n%s\n(%s)\nreversible: %s\n\n", f.name.c_str(), f.summary.c_str(), f.citation.c_str(),
                f.not_reversible.empty() ? "yes" : ("no (" + f.not_reversible + ")").c_str());
    if (!f.schema.empty()) std::printf("%s\n", schema_markdown(f.schema).c_str());
  }
  std::printf("Model kinds (model.type) and trunk systems:\n\n");
  for (const auto& k : model_kind_registry())
    std::printf("## %s\n%s\n(%s)\noptions: %s\n\n", k.name.c_str(), k.summary.c_str(), k.citation.c_str(),
                join(k.options).c_str());
  if (markdown) {
    std::printf("# Config sections\n\n## model\n%s\n## data\n%s\n## train\n%s\n", schema_markdown(model_schema()).c_str(),
                schema_markdown(data_schema()).c_str(), schema_markdown(train_schema()).c_str());
  }
}

// A bound as one would write it (CLI11's own range checks print DBL_MAX in 309 digits).
std::string bound_text(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.10g", v);
  return b;
}

// A number option's check: a finite number in [lo, hi] (CLI11's ranges let NaN through).
CLI::Validator number_in(double lo, double hi) {
  const std::string range = "[" + bound_text(lo) + ", " + bound_text(hi) + "]";
  return CLI::Validator(
      [lo, hi, range](std::string& in) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(in.c_str(), &end);
        if (in.empty() || *end != '\0' || !std::isfinite(v)) return "must be a finite number, got \"" + in + "\"";
        if (v < lo || v > hi) return in + " is out of range; allowed " + range;
        return std::string();
      },
      "in " + range);
}

// More threads than a few per core only slow the work down, and thousands take minutes to start.
CLI::Validator thread_count() {
  const int cores = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  const int most = 4 * cores;
  return CLI::Validator(
      [cores, most](std::string& in) -> std::string {
        char* end = nullptr;
        const long v = std::strtol(in.c_str(), &end, 10);
        if (in.empty() || *end != '\0') return "must be a whole number, got \"" + in + "\"";
        if (v < 0 || v > most)
          return in + " is out of range: this machine has " + std::to_string(cores) + " cores; give 0 (one per core) to " +
                 std::to_string(most) + " (4 per core)";
        return std::string();
      },
      "0 to 4 per core");
}

// Scored targets per second of the evaluation's forward passes.
double tokens_per_s(const EvalResult& e) { return e.seconds > 0 ? static_cast<double>(e.tokens) / e.seconds : 0.0; }

// Generation stops where learned positions end; say so rather than print less silently.
void note_position_limit(const LoadedRun& run, size_t got, int64_t asked) {
  if (static_cast<int64_t>(got) < asked)
    std::fprintf(stderr, "note: generation stopped after %zu of %lld tokens: the learned positions end at model.max_len = %lld\n",
                 got, static_cast<long long>(asked), static_cast<long long>(run.model_config.max_len));
}

}  // namespace

int main(int argc, char** argv) {
  try {
    // The allocation policy (DESIGN.md, "Memory faults") and OpenBLAS's kernels (docs/performance.md) are read
    // as the libraries load: the program re-executes itself once with them set.
    choose_process_environment(argv, true);
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  CLI::App app{"longseq: Transformers on long sequences (train, evaluate, generate)"};
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "intra-op threads (default: all cores)")->check(thread_count());

  auto* info = app.add_subcommand("info", "list every mixer with its options, and the config keys");
  bool markdown = false;
  info->add_flag("--config-keys", markdown, "also document every key of the config sections");
  bool blas_core_only = false;
  info->add_flag("--blas-core", blas_core_only,
                 "print only the OpenBLAS core (OPENBLAS_CORETYPE) this process runs with, empty when OpenBLAS chose "
                 "it alone (scripts/test.sh sets it once for every test process)");

  auto* config = app.add_subcommand("config", "print the embedded default config (the README's main job)");

  auto* train = app.add_subcommand("train", "train a language model or a translation model (by model.type); writes a "
                                            "run directory");
  std::string config_path, out_dir;
  std::vector<std::string> sets;
  bool resume = false, quiet = false;
  int64_t sample_len = 300;
  train->add_option("--config", config_path, "config JSON (default: the embedded default, see `longseq config`)");
  train->add_option("--out", out_dir, "run directory to create (or continue with --resume)")->required();
  train->add_option("--set", sets, "override a config key: section.key=value (repeatable)");
  train->add_flag("--resume", resume, "continue the run in --out from its last checkpoint");
  train->add_flag("--quiet", quiet, "no progress display");
  train->add_option("--sample", sample_len, "bytes of text to generate after training (0 = none; a translation run "
                                            "shows three validation sentences translated instead)")
      ->check(number_in(0, 1e9));

  auto* eval = app.add_subcommand("eval", "evaluate a run: loss, bits per byte, perplexity");
  std::string run_dir, split = "test";
  int64_t eval_batch = 0, eval_max = 0, eval_len = 0, eval_stride = 0;
  bool as_json = false;
  eval->add_option("run", run_dir, "run directory")->required();
  eval->add_option("--split", split, "train, valid or test")->check(CLI::IsMember({"train", "valid", "test"}));
  eval->add_option("--batch-size", eval_batch, "sequences per batch (default: the run's)")->check(number_in(1, 1 << 20));
  eval->add_option("--seq-len", eval_len, "tokens per sequence (default: the run's)")->check(number_in(1, 1 << 30));
  eval->add_option("--max-batches", eval_max, "at most this many batches (default or 0: the whole split)")
      ->check(number_in(0, 1e9));
  auto* stride_opt = eval->add_option("--stride", eval_stride,
                   "sliding-window evaluation: windows start this many tokens apart and score only the targets the "
                   "previous one did not, so each target sees at least seq-len - stride + 1 tokens; seq-len = "
                   "non-overlapping windows (default: the run's train.eval_stride)")
      ->check(number_in(1, 1 << 30));
  eval->add_flag("--json", as_json, "print one JSON object");
  bool eval_stream = false;
  int64_t eval_reset = -1;
  auto* stream_opt = eval->add_flag("--stream", eval_stream,
                 "evaluate over a stream: --batch-size contiguous slices scored segment after segment with the "
                 "model's state carried (every layer must stream), beside the same segments without state; "
                 "--max-batches counts segments")
      ->excludes(stride_opt);
  eval->add_option("--stream-reset", eval_reset,
                   "with --stream: start the state afresh every this many segments; 0 = never (a memory longer than "
                   "in training); default: the run's train.stream_reset")
      ->check(number_in(0, 1e9))
      ->needs(stream_opt);
  std::vector<std::string> mixer_sets;
  const char* mixer_set_help =
      "KEY=VALUE: set a mixer option on every layer whose mixer has it, for this command only (repeatable), e.g. "
      "mem_len=3800 for Transformer-XL's longer memory at test time; options that change the weights fail to load";
  eval->add_option("--mixer-option", mixer_sets, mixer_set_help);

  DecodeOptions decode;
  int64_t bleu_sentences = 0;
  std::string hyp_out;
  auto add_decode_options = [&](CLI::App* cmd) {
    cmd->add_option("--beam", decode.beam, "translation: beam size (1 = greedy; the paper: 4)")->check(number_in(1, 1024));
    cmd->add_option("--alpha", decode.alpha, "translation: GNMT length penalty exponent (the paper: 0.6)")
        ->check(number_in(0, 100));
    cmd->add_option("--extra-len", decode.extra_len, "translation: at most source tokens + this many target tokens")
        ->check(number_in(1, 1e6));
    cmd->add_option("--decode-batch", decode.batch, "translation: sentences decoded together (sorted by length)")
        ->check(number_in(1, 1 << 20));
  };
  add_decode_options(eval);
  eval->add_option("--bleu-sentences", bleu_sentences, "translation: score the first N sentences (0 = all)")
      ->check(number_in(0, 1e9));
  eval->add_option("--hypotheses", hyp_out, "translation: write the decoded sentences to this file");

  auto* translate = app.add_subcommand("translate", "translate sentences with a translation run (one per line)");
  std::string tr_input, tr_output;
  translate->add_option("run", run_dir, "run directory")->required();
  translate->add_option("--input", tr_input, "file of source sentences, one per line (default or -: stdin)");
  translate->add_option("--output", tr_output, "file to write the translations to (default or -: stdout)");
  translate->add_flag("--quiet", quiet, "no progress display");
  add_decode_options(translate);

  auto* plot = app.add_subcommand("plot", "draw a run's training and validation curves as SVG");
  std::string plot_out;
  plot->add_option("run", run_dir, "run directory")->required();
  plot->add_option("--out", plot_out, "SVG file to write (default: RUN/curves.svg)");

  auto* corpus_cmd = app.add_subcommand("corpus", "write a generated corpus to files (synthetic_translation: "
                                                   "train/valid/test .de and .en, the layout data.corpus parallel "
                                                   "reads; listops: basic_{train,val,test}.tsv as LRA releases them; "
                                                   "pathfinder: metadata/<k>.npy and imgs/<k>/sample_<i>.png as "
                                                   "lra_release's pathfinder folders)");
  std::string corpus_kind, corpus_out;
  int64_t corpus_pairs = 40000, corpus_seed = 1, corpus_examples = 100000, corpus_min_len = 500,
          corpus_max_len = 2000;
  corpus_cmd->add_option("kind", corpus_kind, "synthetic_translation, listops or pathfinder")->required()
      ->check(CLI::IsMember({"synthetic_translation", "listops", "pathfinder"}));
  auto* corpus_examples_opt = corpus_cmd->add_option("--examples", corpus_examples, "listops: distinct trees (split "
                                                     "96/2/2); pathfinder: images (default 200000, LRA's per folder)")
      ->check(number_in(3, 1e7));
  int64_t corpus_size = 32;
  std::string corpus_difficulty = "hard";
  corpus_cmd->add_option("--size", corpus_size, "pathfinder: image width and height (32, 64, 128)")
      ->check(CLI::IsMember({32, 64, 128}));
  corpus_cmd->add_option("--difficulty", corpus_difficulty, "pathfinder: baseline, intermediate or hard (contours of "
                                                            "6, 9, 14 paddles)")
      ->check(CLI::IsMember({"baseline", "intermediate", "hard"}));
  corpus_cmd->add_option("--min-length", corpus_min_len, "listops: keep trees longer than this (LRA: 500)")
      ->check(number_in(0, 1e6));
  corpus_cmd->add_option("--max-length", corpus_max_len, "listops: keep trees shorter than this (LRA: 2000)")
      ->check(number_in(2, 1e6));
  corpus_cmd->add_option("--out", corpus_out, "directory to create")->required();
  corpus_cmd->add_option("--pairs", corpus_pairs, "sentence pairs generated (90/5/5 split)")->check(number_in(100, 1e8));
  corpus_cmd->add_option("--seed", corpus_seed, "seed of the generator")->check(number_in(0, 1e18));

  auto* lra = app.add_subcommand("lra", "Long Range Arena (docs/lra.md): train the encoder classifier on a task with "
                                        "LRA's configuration scaled to this machine, then score its test split once");
  std::string lra_task, lra_mixer;
  LraOptions lra_opts;
  bool lra_print = false;
  lra->add_option("task", lra_task, "listops, text, image, retrieval or pathfinder")->required()
      ->check(CLI::IsMember({"listops", "text", "image", "retrieval", "pathfinder"}));
  lra->add_option("--out", lra_opts.out_dir, "run directory (default: lra_<task>_<mixer>)");
  lra->add_option("--mixer", lra_mixer, "model.mixer of every layer (default: full)");
  std::vector<std::string> lra_mixers;
  lra->add_option("--mixers", lra_mixers, "a table instead of one run: train and test each of these mixers (or "
                                          "\"all\": every mixer with a bidirectional mode) in its own process into "
                                          "--out/<mixer> (default --out: lra_<task>_table), then write table.md and "
                                          "table.json there with LRA's Table 1 beside them; run again to continue "
                                          "it")->delimiter(',');
  lra->add_option("--data", lra_opts.data_dir, "listops: directory of basic_{train,val,test}.tsv; pathfinder: of "
                                               "metadata/ and imgs/ (LRA's release or `longseq corpus TASK`); both "
                                               "generated into it when absent (default: generated in memory from "
                                               "the config's seed); text: aclImdb/, image: cifar-10-batches-bin/, "
                                               "retrieval: tsv_data/ (required; docs/lra.md)");
  lra->add_option("--set", sets, "override a config key: section.key=value (repeatable)");
  lra->add_flag("--resume", lra_opts.resume, "continue the run in --out from its last checkpoint");
  lra->add_flag("--quiet", lra_opts.quiet, "no progress display");
  lra->add_flag("--print-config", lra_print, "print the config the task would train, and stop");

  auto* average = app.add_subcommand("average", "average the weights of a run's last checkpoints into a new run "
                                                "directory (Vaswani et al. 2017, sec. 6.1)");
  int64_t avg_last = 5;
  std::string avg_out;
  average->add_option("run", run_dir, "run directory trained with train.keep_checkpoints > 0")->required();
  average->add_option("--last", avg_last, "average the last K kept checkpoints (the paper: 5)")
      ->check(number_in(1, 1e6));
  average->add_option("--out", avg_out, "new run directory to write")->required();

  auto* gen = app.add_subcommand("generate", "generate text from a run");
  std::string prompt;
  int64_t max_new = 200;
  SampleOptions sopts;
  bool no_cache = false;
  gen->add_option("run", run_dir, "run directory")->required();
  gen->add_option("--prompt", prompt, "text to continue")->required();
  gen->add_option("--max-new", max_new, "tokens to generate")->check(number_in(0, 1e9));
  gen->add_option("--temperature", sopts.temperature, "0 = greedy")->check(number_in(0, 1e6));
  gen->add_option("--top-k", sopts.top_k, "keep the k most likely tokens (0 = off)")->check(number_in(0, 1e9));
  gen->add_option("--top-p", sopts.top_p, "keep the smallest set with this mass (1 = off)")->check(number_in(0, 1));
  gen->add_option("--seed", sopts.seed, "sampling seed");
  gen->add_flag("--no-cache", no_cache, "recompute the whole sequence each step instead of using the state");
  gen->add_option("--mixer-option", mixer_sets, mixer_set_help);

  auto* tok = app.add_subcommand("tokenizer", "train a SentencePiece model");
  std::vector<std::string> tok_inputs;
  std::string tok_out, tok_type = "unigram";
  int64_t tok_vocab = 4096;
  tok->add_option("--input", tok_inputs, "text file to train on; repeat it for one joint vocabulary over several "
                                         "files (translation: both sides)")->required();
  tok->add_option("--out", tok_out, "output prefix (writes PREFIX.model, PREFIX.vocab)")->required();
  tok->add_option("--vocab", tok_vocab, "vocabulary size")->check(number_in(8, 1 << 20));
  tok->add_option("--type", tok_type, "unigram or bpe")->check(CLI::IsMember({"unigram", "bpe"}));

  auto* bleu = app.add_subcommand("bleu", "corpus BLEU of a hypothesis file against reference files, as sacreBLEU "
                                          "2.6.0 computes it (one sentence per line)");
  std::string bleu_hyp;
  std::vector<std::string> bleu_refs;
  BleuOptions bleu_opts;
  bleu->add_option("HYP", bleu_hyp, "hypotheses, one per line")->required();
  bleu->add_option("REF", bleu_refs, "references, one file per reference stream, each line aligned with HYP")->required();
  bleu->add_option("--tokenize", bleu_opts.tokenize, "13a (sacreBLEU's default) or none")
      ->check(CLI::IsMember({"13a", "none"}));
  bleu->add_option("--smooth", bleu_opts.smooth, "exp (default), floor, add-k or none")
      ->check(CLI::IsMember({"exp", "floor", "add-k", "none"}));
  bleu->add_flag("--lowercase", bleu_opts.lowercase, "compare lowercased text");

  auto* bench = app.add_subcommand("bench", "measure time, memory and quality of mixers versus length");
  BenchOptions bopts;
  bench->add_option("--mixers", bopts.mixers, "mixers to measure (default: all registered)")->delimiter(',');
  std::vector<std::string> bench_sets;
  bench->add_option("--option", bench_sets,
                    "MIXER.KEY=VALUE: a non-default option of one mixer for every row of it (repeatable), e.g. "
                    "xl.mem_len=16384");
  bench->add_option("--lengths", bopts.lengths, "sequence lengths (default: 1024,2048,...,65536)")
      ->delimiter(',')
      ->check(number_in(1, 1 << 30));
  bench->add_option("--batch", bopts.batch, "batch size B")->check(number_in(1, 1 << 20));
  bench->add_option("--heads", bopts.heads, "heads H")->check(number_in(1, 1024));
  bench->add_option("--head-dim", bopts.head_dim, "head width D (model width = H * D)")->check(number_in(1, 65536));
  bench->add_option("--modes", bopts.modes, "causal, bidirectional")->delimiter(',')->check(CLI::IsMember({"causal", "bidirectional"}));
  bench->add_option("--passes", bopts.passes, "fwd, fwdbwd")->delimiter(',')->check(CLI::IsMember({"fwd", "fwdbwd"}));
  bench->add_option("--repeats", bopts.repeats, "timed repeats after a warm-up (median reported)")
      ->check(number_in(1, 1e6));
  bench->add_option("--time-cap", bopts.time_cap, "seconds per configuration before it is stopped")
      ->check(number_in(0.001, 1e9));
  bench->add_option("--memory-cap", bopts.memory_cap_gib, "GiB of resident memory per configuration before it is stopped")
      ->check(number_in(0.001, 1e6));
  bench->add_option("--budget", bopts.budget, "seconds for the whole run; later configurations are skipped (0 = none)")
      ->check(number_in(0, 1e9));
  bench->add_flag("--stock", bopts.stock, "also run the reference attention core under glibc's default allocator");
  bench->add_flag("--kernels-only", bopts.kernels_only, "only each mechanism's attention core, one series per kernel it offers (fused, reference), not whole mixers");
  bench->add_option("--stack-layers", bopts.stack_layers,
                    "also time whole stacks of the first mixer with this many blocks, standard and reversible "
                    "(activation memory versus depth)")
      ->delimiter(',')
      ->check(number_in(1, 1024));
  bench->add_option("--csv", bopts.csv, "CSV output file (default: none; the tables go to stdout)");
  bench->add_option("--svg", bopts.svg, "plot output file, SVG (default: none)");
  bench->add_option("--decode-contexts", bopts.decode_contexts,
                    "also time token-by-token decoding through each streaming mixer's state after a prefix of these "
                    "lengths (tokens/s)")
      ->delimiter(',')
      ->check(number_in(1, 1 << 30));
  bench->add_option("--decode-tokens", bopts.decode_tokens, "timed single-token steps per decoding row")
      ->check(number_in(1, 1e9));
  bench->add_option("--models", bopts.models,
                    "whole language models to measure (decoder_lm, perceiver_ar, universal_transformer, universal_transformer_act, switch, scaling_sparse_ff, scaling_sparse; equal depth): a training step at each --lengths "
                    "and decoding after each --decode-contexts; alone, no mixer rows")
      ->delimiter(',');
  bench->add_option("--ffn-experts", bopts.ffn_experts,
                    "also time one feed-forward layer, forward + backward at each --lengths: moe (top-1, capacity "
                    "1.25) with each of these expert counts beside dense layers of equal active (d_ff = 4 C) and equal "
                    "total (d_ff = E 4 C) parameters; alone, no mixer rows")
      ->delimiter(',')
      ->check(number_in(1, 4096));
  bench->add_option("--model-layers", bopts.model_layers,
                    "with --models: perceiver_ar's latent layers after its cross-attention; decoder_lm gets one more "
                    "(equal depth)")
      ->check(number_in(1, 1024));
  bench->add_option("--latents", bopts.latents, "with --models: perceiver_ar's latents N")->check(number_in(1, 1 << 24));
  bench->add_option("--quality-steps", bopts.quality_steps, "also train each mixer this many steps and report bits per byte")
      ->check(number_in(0, 1e9));
  bench->add_option("--quality-time", bopts.quality_time,
                    "also train each mixer for this many seconds of training (equal compute: the cosine schedule fitted "
                    "to the budget from a short timed run) and report bits per byte and its curve")
      ->check(number_in(0, 1e7));
  bench->add_option("--quality-seq-len", bopts.quality_seq_len,
                    "quality runs train at this context (default: the embedded config's), the batch scaled to keep "
                    "its tokens per step")
      ->check(number_in(0, 1 << 30));
  bench->add_option("--quality-recall-gaps", bopts.quality_recall_gaps,
                    "quality runs also train each mixer as long on the recall task (a fact stated, asked for after "
                    "this many bytes, one gap drawn per episode) and report the recalled digits' accuracy by gap; 0 = "
                    "no recall runs")
      ->delimiter(',')
      ->check(number_in(0, 1e8))
      ->capture_default_str();
  bench->add_option("--quality-svg", bopts.quality_svg,
                    "write the quality runs' validation curves (bits per byte against training time and steps)");

  auto* bench_one_cmd = app.add_subcommand("bench-one", "(internal) one benchmark configuration");
  bench_one_cmd->group("");
  std::string bench_spec;
  bench_one_cmd->add_option("--spec", bench_spec)->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);  // prints the help, or the message naming the option
    return rc == 0 ? 0 : 1;     // bad input exits 1, as every other error does
  }

  try {
    const int n_threads = configure_threads(threads);
    if (*bench_one_cmd) {
      try {
        std::printf("%s\n", bench_one(parse_json(bench_spec, "--spec")).c_str());
      } catch (const c10::Error& e) {  // the message without LibTorch's backtrace, which would fill the table
        std::printf("%s\n", Json{{"ok", false}, {"error", e.what_without_backtrace()}}.dump(-1, ' ', false, Json::error_handler_t::replace).c_str());
        return 1;
      } catch (const std::exception& e) {
        std::printf("%s\n", Json{{"ok", false}, {"error", e.what()}}.dump(-1, ' ', false, Json::error_handler_t::replace).c_str());
        return 1;
      }
    } else if (*bench) {
      auto blas = check_blas();
      if (blas.slow) std::fprintf(stderr, "%s\n", blas.message.c_str());
      bopts.self = "/proc/self/exe";
      char path[4096];
      ssize_t n = ::readlink("/proc/self/exe", path, sizeof path - 1);
      if (n > 0) bopts.self = std::string(path, static_cast<size_t>(n));
      for (const auto& set : bench_sets) {
        const auto dot = set.find('.'), eq = set.find('=');
        if (dot == std::string::npos || eq == std::string::npos || dot > eq || dot == 0)
          throw Error("--option takes mixer.key=value (e.g. xl.mem_len=16384), got \"" + set + "\"");
        const std::string mixer = set.substr(0, dot);
        bopts.mixer_options[mixer].update(parse_option_assignment(set.substr(dot + 1), "--option", mixer + "."));
      }
      run_bench(bopts);
    } else if (*info) {
      if (blas_core_only) {
        const char* core = std::getenv("OPENBLAS_CORETYPE");
        std::printf("%s\n", core ? core : "");
      } else {
        print_info(markdown);
      }
    } else if (*config) {
      std::printf("%s\n", default_config_text());
    } else if (*train) {
      auto blas = check_blas();
      if (blas.slow) std::fprintf(stderr, "%s\n", blas.message.c_str());
      if (!quiet)
        std::fprintf(stderr, "threads: %d, SGEMM %.0f GFLOP/s (%s), allocator: %s\n", n_threads, blas.gflops,
                     blas_core_report().c_str(), allocation_policy().c_str());
      // A resumed run keeps its own config; one given with --resume must equal it.
      RunConfig cfg;
      const bool use_given = !resume || !config_path.empty() || !sets.empty();
      if (use_given) {
        Json raw = config_path.empty() ? parse_json_text(default_config_text(), "default config")
                                       : parse_json_text(read_file(config_path), config_path);
        try {
          cfg = RunConfig::from_json(apply_overrides(raw, sets));
        } catch (const Error& e) {
          throw Error((config_path.empty() ? std::string("config") : config_path) + ": " + e.what());
        }
      }
      TrainOptions opts;
      opts.out_dir = out_dir;
      opts.resume = resume;
      opts.quiet = quiet;
      auto r = train_run(use_given ? &cfg : nullptr, opts);
      const char* rank = std::getenv("RANK");
      if (world_size_from_environment() > 1 && rank && std::string(rank) != "0") return 0;  // rank 0 reports
      if (is_classification_run(out_dir)) {
        std::printf("step %lld: %s\n", static_cast<long long>(r.last_step), r.valid_text.c_str());
        return 0;
      }
      if (is_translation_run(out_dir)) {
        std::printf("step %lld: %s\n", static_cast<long long>(r.last_step), r.valid_text.c_str());
        if (sample_len > 0) {
          auto run = load_translation_run(out_dir);
          const auto valid = read_translation_corpus(run.config.data).valid;
          const size_t n = std::min<size_t>(3, valid.source.size());
          const std::vector<std::string> src(valid.source.begin(), valid.source.begin() + static_cast<long>(n));
          const auto hyp = translate_sentences(*run.model, *run.tokenizer, run.ids, src, DecodeOptions{});
          for (size_t i = 0; i < n; ++i)
            std::printf("source:      %s\nreference:   %s\ntranslation: %s (beam 4)\n", src[i].c_str(),
                        valid.target[i].c_str(), hyp[i].c_str());
        }
        return 0;
      }
      std::printf("step %lld: validation loss %.4f nats/token, %.4f bits per byte, perplexity %.3f\n(%s)\n",
                  static_cast<long long>(r.last_step), r.valid.loss, r.valid.bpb, r.valid.ppl,
                  r.valid.method().c_str());
      if (sample_len > 0) {
        auto run = load_run(out_dir);
        const std::string p = "The ";
        SampleOptions s;
        s.temperature = 0.8;
        s.top_k = 40;
        auto ids = generate(*run.model, run.tokenizer->encode(p), sample_len, s);
        note_position_limit(run, ids.size(), sample_len);
        std::printf("sample:\n%s%s\n", p.c_str(), run.tokenizer->decode(ids).c_str());
      }
    } else if (*lra) {
      const bool listops = lra_task == "listops", pathfinder = lra_task == "pathfinder";
      Json raw = parse_json_text(listops      ? lra_listops_config_text()
                                 : pathfinder ? lra_pathfinder_config_text()
                                              : lra_file_task_config_text(lra_task),
                                 "the LRA " + lra_task + " config");
      if (!lra_mixer.empty()) raw["model"]["mixer"] = lra_mixer;
      if (!listops && !pathfinder && !lra_opts.data_dir.empty()) raw["data"]["path"] = lra_opts.data_dir;
      raw = apply_overrides(raw, sets);
      if (!lra_mixers.empty()) {
        if (!lra_mixer.empty() || lra_opts.resume || lra_print)
          throw Error("lra: --mixers makes a table of runs; --mixer, --resume and --print-config apply to one run "
                      "(a table continues its unfinished runs when called again)");
        lra_opts.threads = threads;
        lra_table_command(lra_task, lra_table_mixers(lra_mixers), lra_opts, sets);
        return 0;
      }
      if (lra_print) {
        std::printf("%s\n", RunConfig::from_json(raw).to_json().dump(2).c_str());
        return 0;
      }
      if (listops) lra_listops_command(raw, lra_opts);
      else if (pathfinder) lra_pathfinder_command(raw, lra_opts);
      else lra_file_task_command(lra_task, raw, lra_opts);
    } else if (*eval && is_classification_run(run_dir)) {
      if (eval_stream || eval_len > 0 || eval_stride > 0 || !mixer_sets.empty())
        throw Error("eval: --stream, --seq-len, --stride and --mixer-option apply to language-model runs; " + run_dir +
                    " holds a classifier (--split, --batch-size, --max-batches, --json apply)");
      eval_classification(run_dir, split, eval_batch, eval_max, as_json);
    } else if (*eval && is_translation_run(run_dir)) {
      if (eval_stream || eval_len > 0 || eval_stride > 0 || eval_batch > 0 || eval_max > 0 || !mixer_sets.empty())
        throw Error("eval: --stream, --seq-len, --stride, --batch-size, --max-batches and --mixer-option apply to "
                    "language-model runs; " + run_dir + " holds a translation model (use --beam, --alpha, "
                    "--bleu-sentences)");
      eval_translation(run_dir, split, bleu_sentences, decode, as_json, hyp_out);
    } else if (*translate) {
      translate_command(run_dir, tr_input, tr_output, decode, quiet);
    } else if (*average) {
      average_command(run_dir, avg_last, avg_out);
    } else if (*plot) {
      const std::string svg = plot_run_svg(run_dir);
      const std::string out = plot_out.empty() ? run_dir + "/curves.svg" : plot_out;
      write_file_atomic(out, svg);
      std::printf("wrote %s\n", out.c_str());
    } else if (*corpus_cmd) {
      if (corpus_kind == "listops") {
        ListOpsOptions o;
        o.examples = corpus_examples, o.seed = static_cast<uint64_t>(corpus_seed);
        o.min_length = corpus_min_len, o.max_length = corpus_max_len;
        write_listops_corpus(generate_listops(o), corpus_out);
      } else if (corpus_kind == "pathfinder") {
        const int64_t n = corpus_examples_opt->count() ? corpus_examples : 200000;
        const auto t0 = std::chrono::steady_clock::now();
        write_pathfinder_dir(corpus_out, pathfinder_options(corpus_size, corpus_difficulty,
                                                            static_cast<uint64_t>(corpus_seed)), n);
        std::fprintf(stderr, "wrote %s/imgs/*/sample_*.png and metadata/*.npy: %lld images of %lld x %lld in %.1f s\n",
                     corpus_out.c_str(), static_cast<long long>(n),
                     static_cast<long long>(corpus_size), static_cast<long long>(corpus_size),
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      } else {
        write_translation_corpus(Json{{"corpus", corpus_kind}, {"pairs", corpus_pairs}, {"pairs_seed", corpus_seed}},
                                 corpus_out);
      }
    } else if (*eval) {
      auto run = load_run(run_dir, mixer_overrides(mixer_sets));
      auto text = read_corpus(run.config.data);
      auto corpus = tokenize_corpus(text, *run.tokenizer);
      const int64_t B = eval_batch > 0 ? eval_batch : run.config.train["batch_size"].get<int64_t>();
      const int64_t T = eval_len > 0 ? eval_len : run.config.train["seq_len"].get<int64_t>();
      if (run.model_config.positions == "learned" && T > run.model_config.max_len)
        throw Error("--seq-len " + std::to_string(T) + " exceeds model.max_len = " +
                    std::to_string(run.model_config.max_len) + " of the run's learned positions");
      const auto& data = corpus.split(split);
      const int64_t have = data.tokens.size(0);
      if (have < T + 1)
        throw Error(corpus_source(run.config.data) + ": the " + split + " split holds " + std::to_string(have) +
                    " tokens, fewer than seq_len + 1 = " + std::to_string(T + 1));
      const int64_t S = eval_stride > 0 ? eval_stride : std::min(T, run.config.train.value("eval_stride", int64_t{0}));
      const bool recall = run.config.data["corpus"] == "recall";  // the memory task: its values apart
      const torch::Tensor recalled = recall ? recall_positions(data.tokens) : torch::Tensor();
      if (eval_stream) {
        const int64_t reset = eval_reset >= 0 ? eval_reset : run.config.train.value("stream_reset", int64_t{20});
        auto r = evaluate_lm_stream(*run.model, data, B, T, eval_max, reset, recalled);
        if (as_json) {
          auto one = [&](const EvalResult& e) {
            Json j{{"loss", e.loss}, {"bpb", e.bpb}, {"ppl", e.ppl}, {"tokens", e.tokens}, {"eval", e.method()},
                   {"seconds", e.seconds}, {"tokens_per_s", tokens_per_s(e)}};
            if (recall) j["recall_loss"] = e.part_loss, j["recall_tokens"] = e.part_tokens;
            return j;
          };
          std::printf("%s\n", Json{{"split", split}, {"stateful", one(r.stateful)}, {"stateless", one(r.stateless)}}
                                  .dump()
                                  .c_str());
        } else {
          for (const auto* e : {&r.stateful, &r.stateless}) {
            std::printf("%s: loss %.4f nats/token, %.4f bits per byte, perplexity %.3f (%lld tokens, %.2f s, %.0f "
                        "tokens/s): %s\n",
                        split.c_str(), e->loss, e->bpb, e->ppl, static_cast<long long>(e->tokens), e->seconds,
                        tokens_per_s(*e), e->method().c_str());
            if (recall)
              std::printf("  recalled values: loss %.4f nats/byte over %lld bytes (chance: ln 10 = 2.3026)\n",
                          e->part_loss, static_cast<long long>(e->part_tokens));
          }
        }
        return 0;
      }
      const bool chains = run.config.data["corpus"] == "chains";
      const bool depth_task = chains || run.config.data["corpus"] == "expressions";  // the answers by depth
      const torch::Tensor groups = depth_task ? (chains ? chain_depths(data.tokens) : expression_depths(data.tokens))
                                   : recall   ? recall_distances(data.tokens, recall_gaps(run.config.data))
                                              : torch::Tensor();
      auto r = evaluate_lm(*run.model, data, B, T, eval_max, S, recalled, groups);
      Json by_depth = Json::array();
      for (const auto& g : r.groups) {
        Json d{{recall ? "distance" : "depth", g.label}, {recall ? "digits" : "answers", g.targets}, {"loss", g.loss},
               {"accuracy", g.accuracy}};
        if (g.ponder >= 0) d["ponder"] = g.ponder;
        by_depth.push_back(d);
      }
      if (as_json) {
        Json j{{"split", split}, {"loss", r.loss}, {"bpb", r.bpb}, {"ppl", r.ppl},
               {"tokens", r.tokens}, {"split_targets", r.split_targets}, {"whole_split", r.whole()},
               {"seq_len", r.seq_len}, {"stride", r.stride}, {"windows", r.windows},
               {"bytes", data.bytes}, {"text_bytes", data.text_bytes}, {"eval", r.method()},
               {"seconds", r.seconds}, {"tokens_per_s", tokens_per_s(r)}};
        if (recall) j["recall_loss"] = r.part_loss, j["recall_tokens"] = r.part_tokens;
        if (depth_task) j["by_depth"] = by_depth;
        if (recall) j["by_distance"] = by_depth;
        std::printf("%s\n", j.dump().c_str());
      } else {
        std::printf("%s: loss %.4f nats/token, %.4f bits per byte, perplexity %.3f (%lld tokens, %.2f s, %.0f tokens/s)\n%s\n",
                    split.c_str(), r.loss, r.bpb, r.ppl, static_cast<long long>(r.tokens), r.seconds, tokens_per_s(r),
                    r.method().c_str());
        if (recall)
          std::printf("  recalled values: loss %.4f nats/byte over %lld bytes (chance: ln 10 = 2.3026)\n", r.part_loss,
                      static_cast<long long>(r.part_tokens));
        if (recall) {
          std::printf("  recalled digits by distance (the gap drawn for the episode, bytes of filler):\n");
          for (const auto& g : r.groups)
            std::printf("  distance %lld: %lld digits, loss %.4f nats, accuracy %.3f (chance 0.1)\n",
                        static_cast<long long>(g.label), static_cast<long long>(g.targets), g.loss, g.accuracy);
        }
        if (depth_task) {
          std::printf("  answers by %s (ponder: mean N + R of the position predicting the answer):\n",
                      chains ? "lookups needed" : "expression depth");
          for (const auto& g : r.groups)
            std::printf("  depth %lld: %lld answers, loss %.4f nats, accuracy %.3f%s\n", static_cast<long long>(g.label),
                        static_cast<long long>(g.targets), g.loss, g.accuracy,
                        g.ponder >= 0 ? (", ponder " + std::to_string(g.ponder).substr(0, 5)).c_str() : "");
        }
        if (!data.lossless())
          std::printf("note: the tokenizer is lossy: its tokens decode to %lld of the text's %lld bytes; bits per "
                      "byte count the %lld\n",
                      static_cast<long long>(data.bytes), static_cast<long long>(data.text_bytes),
                      static_cast<long long>(data.bytes));
      }
    } else if (*gen) {
      auto run = load_run(run_dir, mixer_overrides(mixer_sets));
      sopts.use_cache = !no_cache;
      if (sopts.use_cache) {  // a layer without a streaming state (routing, or a core that cannot stream) says so
        try {
          (void)run.model->initial_state(1);
        } catch (const Error& e) {
          std::fprintf(stderr, "note: %s; recomputing the sequence at each step\n", e.what());
          sopts.use_cache = false;
        }
      }
      auto ids = generate(*run.model, run.tokenizer->encode(prompt), max_new, sopts);
      note_position_limit(run, ids.size(), max_new);
      std::printf("%s%s\n", prompt.c_str(), run.tokenizer->decode(ids).c_str());
    } else if (*bleu) {
      const auto hyps = read_bleu_lines(bleu_hyp);
      std::vector<std::vector<std::string>> refs;
      for (const auto& f : bleu_refs) {
        refs.push_back(read_bleu_lines(f));
        if (refs.back().size() != hyps.size())
          throw Error("bleu: " + f + " has " + std::to_string(refs.back().size()) + " lines but " + bleu_hyp + " has " +
                      std::to_string(hyps.size()) + "; the files must be aligned line by line");
      }
      const auto r = corpus_bleu(hyps, refs, bleu_opts);
      std::printf("%s\n%s\n", r.summary().c_str(), r.signature.c_str());
    } else if (*tok) {
      train_sentencepiece(tok_inputs, tok_out, tok_vocab, tok_type);
      std::printf("wrote %s.model and %s.vocab\n", tok_out.c_str(), tok_out.c_str());
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
