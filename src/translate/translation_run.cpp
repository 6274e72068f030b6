// Translation runs: corpus, loading, batched decoding and evaluation (see longseq/translation_run.h).
#include "longseq/translation_run.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <set>

#include "longseq/common.h"
#include "longseq/runtime.h"
#include "longseq/safetensors.h"
#include "longseq/synthetic_translation.h"

namespace longseq {

namespace {

// <dir>/<split>.<lang>, or the same with .sgm / .xml (the WMT and IWSLT test-set layouts); "" when none exists.
std::string split_file(const std::string& dir, const std::string& split, const std::string& lang) {
  for (const char* ext : {"", ".sgm", ".xml"}) {
    const std::string p = dir + "/" + split + "." + lang + ext;
    if (path_exists(p)) return p;
  }
  return "";
}

ParallelText read_split(const Json& d, const std::string& split, bool required) {
  const std::string dir = d["path"], src = d["source_lang"], tgt = d["target_lang"];
  const std::string s = split_file(dir, split, src), t = split_file(dir, split, tgt);
  if (s.empty() || t.empty()) {
    if (!required && s.empty() && t.empty()) return {};
    throw Error("data.corpus parallel: " + dir + " lacks " + (s.empty() ? split + "." + src : split + "." + tgt) +
                " (plain text, .sgm or .xml), which the " + split + " split needs beside " +
                (s.empty() ? (t.empty() ? split + "." + tgt : t) : s));
  }
  ParallelText p = read_parallel_auto(s, t);
  if (p.source.empty()) throw Error("data.corpus parallel: the " + split + " split (" + s + ", " + t + ") holds no "
                                    "sentence pairs with text on both sides");
  return p;
}

// Moves the last `n` pairs of `from` to `to`.
void move_tail(ParallelText& from, ParallelText& to, size_t n) {
  const size_t keep = from.source.size() - n;
  to.source.assign(from.source.begin() + static_cast<std::ptrdiff_t>(keep), from.source.end());
  to.target.assign(from.target.begin() + static_cast<std::ptrdiff_t>(keep), from.target.end());
  from.source.resize(keep);
  from.target.resize(keep);
}

// Held-out pairs whose source also occurs in training are removed: the demo's BLEU then measures generalisation.
void drop_seen(ParallelText& held_out, const std::set<std::string>& seen) {
  ParallelText kept;
  for (size_t i = 0; i < held_out.source.size(); ++i)
    if (!seen.count(held_out.source[i])) kept.source.push_back(held_out.source[i]), kept.target.push_back(held_out.target[i]);
  held_out = kept;
}

std::vector<int64_t> text_ids(const std::vector<int64_t>& ids, const SpecialIds& sp) {
  std::vector<int64_t> out;
  for (int64_t id : ids) {
    if (id == sp.eos) break;
    if (id >= 0 && id < sp.pad) out.push_back(id);  // a special the model emitted mid-sentence is not text
  }
  return out;
}

}  // namespace

TranslationSplits read_translation_corpus(const Json& d) {
  TranslationSplits s;
  if (d["corpus"] == "synthetic_translation") {
    s.train = synthetic_translation_corpus(d["pairs"], d["pairs_seed"]);
    const size_t n = s.train.source.size(), held = std::max<size_t>(1, n / 20);
    move_tail(s.train, s.test, held);
    move_tail(s.train, s.valid, held);
    const std::set<std::string> seen(s.train.source.begin(), s.train.source.end());
    drop_seen(s.valid, seen);
    drop_seen(s.test, seen);
    if (s.valid.source.empty()) throw Error("data.pairs = " + std::to_string(n) + " leaves no held-out pair unseen "
                                            "in training; generate more pairs");
    return s;
  }
  if (d["corpus"] != "parallel")
    throw Error("data.corpus " + d["corpus"].get<std::string>() + " is not a translation corpus (parallel, "
                "synthetic_translation)");
  if (!path_exists(d["path"].get<std::string>()))
    throw Error("data.corpus parallel: data.path " + d["path"].get<std::string>() + " does not exist");
  s.train = read_split(d, "train", true);
  s.valid = read_split(d, "valid", true);
  s.test = read_split(d, "test", false);
  return s;
}

std::vector<TranslationExample> tokenize_pairs(const ParallelText& text, const Tokenizer& tokenizer) {
  std::vector<TranslationExample> out(text.source.size());
  for (size_t i = 0; i < out.size(); ++i) {
    out[i].source = tokenizer.encode(text.source[i]);
    out[i].target = tokenizer.encode(text.target[i]);
  }
  return out;
}

LoadedTranslationRun load_translation_run(const std::string& dir) {
  const std::string config_path = dir + "/config.json", weights = dir + "/model.safetensors";
  if (!path_exists(dir)) throw Error("run directory " + dir + " does not exist");
  if (!path_exists(config_path)) throw Error(dir + " is not a run directory: it has no config.json");
  LoadedTranslationRun run;
  run.config = load_run_config(config_path);
  if (run.config.model["type"] != "encoder_decoder")
    throw Error(dir + " holds a " + run.config.model["type"].get<std::string>() + " run, not a translation model "
                "(model.type encoder_decoder)");
  if (!path_exists(weights)) throw Error(dir + " has no model.safetensors yet (no checkpoint was written)");
  run.model_config = ModelConfig::from_json(run.config.model);
  run.tokenizer = run.config.data["tokenizer"] == "sentencepiece" ? load_sentencepiece(dir + "/tokenizer.model")
                                                                 : make_byte_tokenizer();
  try {
    run.model = EncoderDecoder(encoder_decoder_config(run.model_config, run.tokenizer->vocab_size()));
  } catch (const Error& e) {
    throw Error(config_path + ": " + e.what());
  }
  run.ids = SpecialIds::after(run.tokenizer->vocab_size());
  load_module_tensors(*run.model, load_safetensors(weights), weights);
  run.model->eval();
  return run;
}

std::vector<std::string> translate_sentences(EncoderDecoderImpl& model, const Tokenizer& tokenizer, SpecialIds ids,
                                             const std::vector<std::string>& sources, const DecodeOptions& o,
                                             const std::function<void(int64_t)>& progress) {
  if (o.beam < 1) throw Error("translate: the beam must be at least 1, got " + std::to_string(o.beam));
  if (o.extra_len < 1) throw Error("translate: the extra length must be at least 1, got " + std::to_string(o.extra_len));
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  std::vector<std::string> out(sources.size());
  std::vector<std::vector<int64_t>> src(sources.size());
  for (size_t i = 0; i < sources.size(); ++i) {
    src[i] = tokenizer.encode(sources[i]);
    src[i].push_back(ids.eos);
  }
  BeamOptions bo;
  bo.beam = o.beam, bo.alpha = o.alpha, bo.bos = ids.bos, bo.eos = ids.eos;
  int64_t done = 0;
  auto finish = [&](size_t i, const std::vector<int64_t>& tokens) {
    out[i] = tokenizer.decode(text_ids(tokens, ids));
    if (progress) progress(++done);
  };
  // Greedy decoding of up to o.batch sentences at once over the decoder's incremental state (its mixer must stream).
  // A decoder mixer without a streaming state decodes one sentence at a time, recomputed.
  const bool batched = o.beam == 1 && translation_can_cache(model);
  // Sentences of similar length together, so little of each batch is padding.
  std::vector<size_t> order(sources.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return src[a].size() < src[b].size(); });
  if (o.beam > 1) {
    // Beam search over o.batch sentences at once (translate_batch); the length limit is the batch's longest source
    // + extra_len, sentences being sorted by length so that it is close to each one's own.
    for (size_t first = 0; first < order.size(); first += static_cast<size_t>(o.batch)) {
      const size_t n = std::min(order.size() - first, static_cast<size_t>(o.batch));
      std::vector<torch::Tensor> batch;
      int64_t longest = 0;
      for (size_t k = 0; k < n; ++k) {
        batch.push_back(torch::tensor(src[order[first + k]], torch::kLong));
        longest = std::max<int64_t>(longest, static_cast<int64_t>(src[order[first + k]].size()));
      }
      bo.max_len = longest + o.extra_len;
      const auto hyps = translate_batch(model, batch, bo);
      for (size_t k = 0; k < n; ++k) finish(order[first + k], hyps[k].tokens);
    }
  } else if (!batched) {
    for (size_t i = 0; i < sources.size(); ++i) {
      bo.max_len = static_cast<int64_t>(src[i].size()) + o.extra_len;
      finish(i, translate_greedy(model, torch::tensor(src[i], torch::kLong), bo).tokens);
    }
  } else {
    for (size_t first = 0; first < order.size(); first += static_cast<size_t>(o.batch)) {
      const size_t n = std::min(order.size() - first, static_cast<size_t>(o.batch));
      int64_t S = 0;
      for (size_t k = 0; k < n; ++k) S = std::max<int64_t>(S, static_cast<int64_t>(src[order[first + k]].size()));
      auto src_t = torch::full({static_cast<int64_t>(n), S}, ids.pad, torch::kLong);
      std::vector<int64_t> limit(n);
      for (size_t k = 0; k < n; ++k) {
        const auto& s = src[order[first + k]];
        src_t[static_cast<int64_t>(k)].narrow(0, 0, static_cast<int64_t>(s.size())).copy_(torch::tensor(s, torch::kLong));
        limit[k] = static_cast<int64_t>(s.size()) + o.extra_len;
      }
      auto src_pad = src_t.eq(ids.pad);
      auto memory = model.encode(src_t, src_pad);
      auto state = model.initial_state(memory, src_pad);
      std::vector<std::vector<int64_t>> hyp(n);
      std::vector<bool> finished(n, false);
      auto next = torch::full({static_cast<int64_t>(n), 1}, ids.bos, torch::kLong);
      const int64_t longest = *std::max_element(limit.begin(), limit.end());
      for (int64_t step = 0; step < longest; ++step) {
        auto logits = model.decode(next, memory, src_pad, &state);  // [n, 1, V]
        next = logits.select(1, 0).argmax(-1).unsqueeze(1);
        auto acc = next.accessor<int64_t, 2>();
        bool all = true;
        for (size_t k = 0; k < n; ++k) {
          if (finished[k]) continue;
          hyp[k].push_back(acc[static_cast<int64_t>(k)][0]);
          finished[k] = acc[static_cast<int64_t>(k)][0] == ids.eos || static_cast<int64_t>(hyp[k].size()) >= limit[k];
          all = all && finished[k];
        }
        if (all) break;
      }
      for (size_t k = 0; k < n; ++k) finish(order[first + k], hyp[k]);
    }
  }
  for (size_t i = 0; i < sources.size(); ++i)
    if (sources[i].empty()) out[i].clear();  // nothing to translate (reference tools drop such pairs)
  if (was_training) model.train();
  return out;
}

TranslationEval evaluate_translation(EncoderDecoderImpl& model, const Tokenizer& tokenizer, SpecialIds ids,
                                     const ParallelText& pairs, int64_t batch_tokens, int64_t bleu_sentences,
                                     const DecodeOptions& decode) {
  const auto t0 = std::chrono::steady_clock::now();
  TranslationEval r;
  r.pairs = static_cast<int64_t>(pairs.source.size());
  const bool was_training = model.is_training();
  model.eval();
  {
    torch::NoGradGuard no_grad;
    const auto ex = tokenize_pairs(pairs, tokenizer);
    int64_t budget = batch_tokens;  // a pair longer than the budget gets a batch of its own
    for (const auto& e : ex)
      budget = std::max<int64_t>(budget, static_cast<int64_t>(e.source.size() + e.target.size()) + 2);
    double nats = 0;
    for (const auto& idx : length_batches(ex, budget, 0, 0)) {
      auto b = make_translation_batch(ex, idx, ids.pad, ids.bos, ids.eos);
      auto logits = model.forward(b.src, b.tgt_in, b.src_pad);
      auto ce = torch::nn::functional::cross_entropy(
          logits.reshape({-1, logits.size(-1)}), b.tgt_out.reshape({-1}),
          torch::nn::functional::CrossEntropyFuncOptions().ignore_index(ids.pad).reduction(torch::kSum));
      nats += ce.item<double>();
      r.targets += b.tgt_tokens;
    }
    r.loss = nats / static_cast<double>(std::max<int64_t>(r.targets, 1));
    r.ppl = std::exp(r.loss);
  }
  if (bleu_sentences >= 0 && !pairs.source.empty()) {
    const size_t n = bleu_sentences == 0 ? pairs.source.size()
                                         : std::min(pairs.source.size(), static_cast<size_t>(bleu_sentences));
    const std::vector<std::string> src(pairs.source.begin(), pairs.source.begin() + static_cast<std::ptrdiff_t>(n));
    const std::vector<std::string> ref(pairs.target.begin(), pairs.target.begin() + static_cast<std::ptrdiff_t>(n));
    r.hypotheses = translate_sentences(model, tokenizer, ids, src, decode);
    r.bleu = corpus_bleu(r.hypotheses, {ref});
    r.has_bleu = true;
    r.bleu_sentences = static_cast<int64_t>(n);
  }
  if (was_training) model.train();
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

TensorFile average_weights(const std::vector<std::string>& paths) {
  if (paths.empty()) throw Error("average: no checkpoint files given");
  TensorFile first = load_safetensors(paths[0]);
  std::vector<torch::Tensor> sums;
  for (const auto& kv : first.tensors) sums.push_back(kv.second.to(torch::kDouble));
  for (size_t f = 1; f < paths.size(); ++f) {
    TensorFile next = load_safetensors(paths[f]);
    if (next.tensors.size() != first.tensors.size())
      throw Error("average: " + paths[f] + " holds " + std::to_string(next.tensors.size()) + " tensors but " +
                  paths[0] + " holds " + std::to_string(first.tensors.size()) + "; checkpoints of one run only");
    for (size_t i = 0; i < sums.size(); ++i) {
      const torch::Tensor* t = next.find(first.tensors[i].first);
      if (!t) throw Error("average: " + paths[f] + " lacks tensor " + first.tensors[i].first + " of " + paths[0]);
      check_tensor_matches(*t, first.tensors[i].second, paths[f], "tensor " + first.tensors[i].first);
      sums[i] += t->to(torch::kDouble);
    }
  }
  TensorFile out;
  for (size_t i = 0; i < sums.size(); ++i)
    out.tensors.push_back({first.tensors[i].first,
                           (sums[i] / static_cast<double>(paths.size())).to(first.tensors[i].second.scalar_type())});
  out.metadata = {{"format", "pt"}, {"averaged", std::to_string(paths.size())}};
  return out;
}

}  // namespace longseq
