#include "longseq/config.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "longseq/blocks.h"
#include "longseq/common.h"
#include "longseq/encoder_decoder.h"
#include "longseq/lra.h"
#include "longseq/registry.h"

namespace longseq {

const Schema& model_schema() {
  static const Schema s = {
      {"type", OptionType::String, "decoder_lm",
       "model family: decoder_lm, perceiver_ar, encoder_classifier, or encoder_decoder (the original Transformer for "
       "translation: model.mixer in the encoder, model.decoder_mixer in the decoder)", -1e300, 1e300,
       {"decoder_lm", "perceiver_ar", "encoder_classifier", "encoder_decoder"}},
      {"vocab_size", OptionType::Int, 256, "vocabulary size (256 for the byte tokenizer)", 2, 1e7},
      {"d_model", OptionType::Int, 256, "model width C", 1, 65536},
      {"n_heads", OptionType::Int, 4, "attention heads H (d_model must be a multiple)", 1, 1024},
      {"n_layers", OptionType::Int, 4, "number of blocks (ignored when \"layers\" is given)", 1, 1024},
      {"d_ff", OptionType::Int, 0, "feed-forward width; 0 means 4 * d_model", 0, 1 << 20},
      {"max_len", OptionType::Int, 2048, "longest position for learned positions", 1, 1 << 30},
      {"positions", OptionType::String, "sinusoidal",
       "sinusoidal, learned or none: absolute positions added to the embeddings; rotary (perceiver_ar only): "
       "rotary positions in the cross-attention and in latent layers whose mixer takes them (full)",
       -1e300, 1e300, {"sinusoidal", "learned", "none", "rotary"}},
      {"dropout", OptionType::Float, 0.0, "dropout on residual branches and embeddings", 0.0, 1.0},
      {"reversible", OptionType::Bool, false,
       "reversible residual blocks (Reformer sec. 3): Y1 = X1 + mix(X2), Y2 = X2 + FF(Y1); the backward recomputes "
       "each block's inputs from its outputs, so activation memory does not grow with n_layers; the stack's output "
       "is (Y1 + Y2) / 2"},
      {"ff_chunks", OptionType::Int, 1,
       "compute the feed-forward over this many slices of the length (Reformer eq. 10); with reversible blocks the "
       "backward is sliced too, so the d_ff-wide hidden layer never exists for the whole length", 1, 1 << 20},
      {"recurrence_steps", OptionType::Int, 0,
       "Universal Transformer depth recurrence (Dehghani et al. 2019, sec. 2.1): the n_layers blocks, one set of "
       "weights, applied this many times, the coordinate embedding (the sinusoid of the position, unless positions "
       "= none, plus the sinusoid of the step t = 1, 2, ...) added before each application instead of once at the "
       "input; decoding keeps every step's caches; 0 = off", 0, 1024},
      {"act", OptionType::Bool, false,
       "adaptive computation time over the recurrence (Dehghani et al. 2019, sec. 2.2): a halting unit per position, "
       "recurrence_steps becomes the cap on steps, the ponder cost act_loss_weight * mean(N + R) is added to the "
       "training loss and logged as \"ponder\"; halted positions carry their state unchanged (docs/mechanisms.md)"},
      {"act_epsilon", OptionType::Float, 0.01, "ACT: a position halts when its halting sum would pass 1 - act_epsilon",
       1e-6, 0.5},
      {"act_loss_weight", OptionType::Float, 0.01, "ACT: weight tau of the ponder cost", 0.0, 100.0},
      {"act_bias_init", OptionType::Float, 1.0, "ACT: initial bias of the halting unit (t2t: 1.0)", -100.0, 100.0},
      {"act_update", OptionType::String, "basic",
       "ACT: basic (out = w y + (1 - w) out, t2t's default) or accumulated (out = out + w y, Graves's sum)", -1e300,
       1e300, {"basic", "accumulated"}},
      {"tie_embeddings", OptionType::Bool, true, "output projection shares the token embedding"},
      {"output_modules", OptionType::Int, 0,
       "decoder_lm: > 0 replaces the output projection by the Scaling Transformer's sparse loss layer (Jaszczur et "
       "al. 2021, sec. 3.2): the multiplicative dense layer with this many modules of vocab_size / modules logits "
       "(the paper: 4); must divide vocab_size; 0 = the tied or untied dense output", 0, 1 << 20},
      {"ff_activation", OptionType::String, "auto",
       "feed-forward nonlinearity: gelu, relu (the original Transformer), squared_relu (relu(x)^2), or auto = "
       "squared_relu for perceiver_ar (the paper's MLP), gelu otherwise", -1e300, 1e300,
       {"auto", "gelu", "relu", "squared_relu"}},
      {"latents", OptionType::Int, 256,
       "perceiver_ar: N, the final input positions that become latents (each predicts the next token); the loss "
       "covers those positions only; inputs shorter than N use all their positions", 1, 1 << 24},
      {"reset_latents", OptionType::Int, 0,
       "perceiver_ar decoding: when the latent caches hold N latents, the next token refills them by a full pass "
       "with this many latents (App. E.3); 0 = N / 2", 0, 1 << 24},
      {"context_dropout", OptionType::Float, 0.0,
       "perceiver_ar training: this share of the context positions before the latents is dropped at random per "
       "example (cross-attend dropout, sec. 3); dropped positions are removed, so the cross-attention costs less",
       0.0, 0.99},
      {"rotary_fraction", OptionType::Float, 0.5,
       "perceiver_ar with positions = rotary: share of each head's channels rotated (adjacent pairs)", 0.0, 1.0},
      {"rotary_max_wavelength", OptionType::Float, 0.0,
       "perceiver_ar with positions = rotary: the slowest band's wavelength in positions; 0 = max_len", 0.0, 1e12},
      {"z_loss", OptionType::Float, 1e-4,
       "perceiver_ar: weight of the z-loss mean((log Z)^2) over the latents' logits added to the training loss "
       "(the paper's code: 1e-4); 0 = off", 0.0, 1.0},
      {"mixer", OptionType::Any, "full", "mixer of every layer: a name or {\"name\": ..., options}"},
      {"block", OptionType::Any, "standard",
       "block kind of every layer: standard (pre-norm mixer + feed-forward), or a kind with its own layer "
       "(`longseq info` lists them): a name or {\"name\": ..., options}"},
      {"ff", OptionType::Any, "dense",
       "feed-forward kind of every standard block: dense, chunked, moe (`longseq info` lists them with their "
       "options): a name or {\"name\": ..., options}; a model.layers mixer entry may carry its own \"ff\""},
      {"layers", OptionType::Any, Json::array(),
       "per-layer specs, overriding mixer, block and n_layers: a mixer (name or object: a standard block), or "
       "{\"block\": kind, options} for another block kind"},
      {"decoder_mixer", OptionType::Any, "full",
       "encoder_decoder: the decoder's self-attention, a strictly causal mixer (name or {\"name\": ..., options}); "
       "encoder-decoder attention is always exact"},
      {"norm", OptionType::String, "post",
       "encoder_decoder: post (LayerNorm(x + Dropout(Sublayer(x))), Vaswani et al. 2017 sec. 3.1) or pre (x + "
       "Dropout(Sublayer(LN(x))) with a final LayerNorm per stack, tensor2tensor v2+)", -1e300, 1e300,
       {"post", "pre"}},
      {"num_classes", OptionType::Int, 2, "classes (encoder_classifier; ListOps: 10)", 2, 1e6},
      {"pooling", OptionType::String, "mean",
       "how the classifier pools tokens (encoder_classifier): mean (over the non-pad positions), first (the first "
       "token's output), or cls (LRA: a learned vector, zeros at init, prepended before the positions are added; "
       "its output is pooled, so the encoder runs over T + 1 positions)", -1e300, 1e300, {"mean", "first", "cls"}},
      {"classifier_hidden", OptionType::Int, 0,
       "encoder_classifier head: 0 = one linear layer; > 0 = Dense(this) -> ReLU -> Dense(num_classes) (LRA's head, "
       "with this = its mlp_dim, 1024 for ListOps)", 0, 1 << 20},
      {"dual_encoder", OptionType::Bool, false,
       "encoder_classifier over pairs of documents (data.corpus aan, LRA Retrieval): each document through the same "
       "encoder, pooled u, v, the head on [u, v, u*v, u-v]: Dense(classifier_hidden) -> ReLU -> "
       "Dense(classifier_hidden / 2) -> ReLU -> Dense(num_classes) (LRA's two-tower NLI head), or one linear layer "
       "when classifier_hidden = 0"},
  };
  return s;
}

const Schema& data_schema() {
  static const Schema s = {
      {"corpus", OptionType::String, "pydoc", "which reader loads the text; listops: LRA's ListOps (Tay et al. 2021), for model.type encoder_classifier; imdb, cifar10, aan: LRA's Text, Image and Retrieval tasks from their files (docs/lra.md); pathfinder: LRA's Pathfinder, generated or from its files", -1e300, 1e300,
       {"pydoc", "text", "enwik8", "text8", "wikitext103", "pg19", "recall", "expressions", "chains", "parallel",
        "synthetic_translation", "listops", "imdb", "cifar10", "aan", "pathfinder"}},
      {"path", OptionType::String, "",
       "file or directory of the corpus; empty = the default (pydoc: Debian's python3.11-doc sources; listops: "
       "generated with the data.listops_* keys, else a directory with basic_train.tsv, basic_val.tsv and "
       "basic_test.tsv as LRA releases them in lra_release/listops-1000; pathfinder: generated with the "
       "data.pathfinder_* keys, else a folder with metadata/ and imgs/ such as lra_release's "
       "pathfinder32/curv_contour_length_14). Required for imdb (the aclImdb directory of aclImdb_v1.tar.gz), "
       "cifar10 (cifar-10-batches-bin of cifar-10-binary.tar.gz) and aan (tsv_data of lra_release.gz, with "
       "new_aan_pairs.{train,eval,test}.tsv)"},
      {"split", OptionType::String, "auto",
       "how pydoc and text are split: tail (the first 90% train, then 5% valid, 5% test) or interleaved (blocks of "
       "split_block bytes ended at a newline, every 19th of 20 to valid and every 20th to test, so both sample the "
       "whole corpus); auto = interleaved for pydoc (its sorted files end with changelogs), tail for text",
       -1e300, 1e300, {"auto", "tail", "interleaved"}},
      {"split_block", OptionType::Int, 65536, "data.split interleaved: bytes per block (then to the line's end)", 1,
       1e12},
      {"tokenizer", OptionType::String, "byte", "byte (256 symbols) or a SentencePiece model",
       -1e300, 1e300, {"byte", "sentencepiece"}},
      {"spm_model", OptionType::String, "", "SentencePiece .model file (tokenizer = sentencepiece)"},
      {"recall_gap", OptionType::Int, 1000,
       "corpus recall: bytes of filler between a fact and the question that needs it", 1, 1e8},
      {"recall_gaps", OptionType::IntList, Json::array(),
       "corpus recall: gaps to draw from, one per episode (each with its up to 1/8 jitter), so eval reports the "
       "recalled digits' accuracy by distance; empty = recall_gap alone", 1, 1e8},
      {"recall_bytes", OptionType::Int, 2000000, "corpus recall: bytes of generated text (90/5/5 split)", 1000, 1e10},
      {"recall_seed", OptionType::Int, 1, "corpus recall: seed of the generator", 0, 1e18},
      {"expr_bytes", OptionType::Int, 2000000,
       "corpus expressions: bytes of generated lines \"<expression>=<value mod 10>\" (90/5/5 split)", 1000, 1e10},
      {"expr_max_depth", OptionType::Int, 6,
       "corpus expressions: nesting depths drawn uniformly from 1 to this (eval reports the answers by depth)", 1, 40},
      {"expr_seed", OptionType::Int, 1, "corpus expressions: seed of the generator", 0, 1e18},
      {"chain_bytes", OptionType::Int, 2000000,
       "corpus chains: bytes of generated lines of shuffled statements \"x=y;\" and a question \"?q=<digit>\" "
       "(90/5/5 split)", 1000, 1e10},
      {"chain_max_depth", OptionType::Int, 4,
       "corpus chains: lookups a question needs, drawn uniformly from 1 to this (eval reports the answers by it)", 1,
       12},
      {"chain_seed", OptionType::Int, 1, "corpus chains: seed of the generator", 0, 1e18},
      {"source_lang", OptionType::String, "de",
       "corpus parallel: the source side's suffix: data.path holds train.<source_lang>, train.<target_lang>, "
       "valid.* and optionally test.* (each plain text, one sentence per line, or .sgm / IWSLT .xml)"},
      {"target_lang", OptionType::String, "en", "corpus parallel: the target side's suffix"},
      {"pairs", OptionType::Int, 40000,
       "corpus synthetic_translation: sentence pairs generated (90/5/5 split, held-out sources unseen in training)",
       100, 1e8},
      {"pairs_seed", OptionType::Int, 1, "corpus synthetic_translation: seed of the generator", 0, 1e18},
      {"listops_examples", OptionType::Int, 100000,
       "corpus listops with data.path empty: distinct trees generated, split 96/2/2 as LRA (100000 = 96000 / 2000 "
       "/ 2000) in drawing order", 3, 1e7},
      {"listops_seed", OptionType::Int, 1,
       "corpus listops: seed of the generator (LRA's generator is unseeded; this one is reproducible)", 0, 1e18},
      {"listops_min_length", OptionType::Int, 500,
       "corpus listops: a tree is kept iff listops_min_length < its tokens < listops_max_length (LRA: 500 and 2000; "
       "tokens = operators, digits and closing brackets)", 0, 1e6},
      {"listops_max_length", OptionType::Int, 2000, "corpus listops: the exclusive upper bound of a tree's tokens",
       2, 1e6},
      {"valid_examples", OptionType::Int, 0,
       "corpus imdb, cifar10, aan: keep the first this many examples of the validation split (0 = all; the final "
       "validation reads all of what is kept, and a scaled run need not score all of AAN's eval file); the test "
       "split is always whole", 0, 1e9},
      {"pathfinder_examples", OptionType::Int, 200000,
       "corpus pathfinder: images generated (data.path empty), or the most read from data.path in metadata order; "
       "split 80/10/10 by a seeded shuffle (LRA: 200000 per folder = 160000 / 20000 / 20000)", 10, 1e8},
      {"pathfinder_size", OptionType::Int, 32,
       "corpus pathfinder, generated: the image width and height, 32, 64 or 128 (LRA's Pathfinder; Path-X is 128), "
       "with snakes2's parameters for that size", 32, 128},
      {"pathfinder_difficulty", OptionType::String, "hard",
       "corpus pathfinder, generated: baseline, intermediate or hard = contours of 6, 9 or 14 paddles (LRA trains "
       "on hard)", -1e300, 1e300, {"baseline", "intermediate", "hard"}},
      {"pathfinder_seed", OptionType::Int, 1,
       "corpus pathfinder: seed of the generator and of the 80/10/10 shuffle (LRA's split follows its TFDS build "
       "order and cannot be reproduced)", 0, 1e18},
  };
  return s;
}

const Schema& train_schema() {
  static const Schema s = {
      {"steps", OptionType::Int, 1000, "optimizer steps", 1, 1e9},
      {"batch_size", OptionType::Int, 8, "sequences per micro-batch", 1, 1 << 20},
      {"seq_len", OptionType::Int, 512, "tokens per training sequence (context T)", 1, 1 << 30},
      {"accum", OptionType::Int, 1, "micro-batches accumulated per optimizer step", 1, 1 << 20},
      {"allreduce_bucket_mb", OptionType::Float, 25.0,
       "data parallel: MiB of gradients per all-reduce; each bucket's sum starts during the backward as soon as its "
       "gradients are final (docs/distributed.md)",
       0.0, 1e6},
      {"lr", OptionType::Float, 1e-3, "peak learning rate", 0.0, 10.0},
      {"min_lr_ratio", OptionType::Float, 0.1, "final learning rate as a fraction of lr", 0.0, 1.0},
      {"warmup", OptionType::Int, 100,
       "linear warm-up steps, then cosine decay to lr * min_lr_ratio at the last step; must be less than steps",
       0, 1e9},
      {"weight_decay", OptionType::Float, 0.1,
       "AdamW decoupled weight decay (weights of projections and embeddings only)", 0.0, 10.0},
      {"beta1", OptionType::Float, 0.9, "AdamW beta1", 0.0, 0.999999},
      {"beta2", OptionType::Float, 0.95, "AdamW beta2", 0.0, 0.999999},
      {"eps", OptionType::Float, 1e-8, "AdamW epsilon", 0.0, 1.0},
      {"grad_clip", OptionType::Float, 1.0, "clip the global gradient norm; 0 = off", 0.0, 1e9},
      {"max_nonfinite_steps", OptionType::Int, 5,
       "a step whose loss or gradient is not finite is skipped (no update) and logged; this many in a row stop "
       "the run with an error, leaving the last checkpoint as it was", 1, 1e9},
      {"seed", OptionType::Int, 1234, "seed of initialization, batches and dropout", 0, 9e18},
      {"eval_every", OptionType::Int, 200, "validate every N steps; 0 = only at the end", 0, 1e9},
      {"eval_batches", OptionType::Int, 8,
       "validation batches (of batch_size windows) per evaluation; 0 = the whole split", 0, 1e9},
      {"eval_stride", OptionType::Int, 0,
       "validation windows of seq_len start this many tokens apart and score only the targets the previous window "
       "did not (sliding-window evaluation: each target sees at least seq_len - eval_stride + 1 tokens); "
       "0 = seq_len, non-overlapping windows", 0, 1 << 30},
      {"log_every", OptionType::Int, 10, "write a metrics line every N steps", 1, 1e9},
      {"checkpoint_every", OptionType::Int, 100, "checkpoint every N steps (and at the end)", 1, 1e9},
      {"stream", OptionType::Bool, false,
       "train over a stream: each batch row reads its own contiguous slice of the corpus, segment after segment, "
       "and the model's streaming state (every layer's cache or running sums) carries from one step to the next, "
       "gradients stopped at each segment boundary (truncated backprop over one segment; Dai et al. 2019). Needs "
       "every layer to stream"},
      {"stream_reset", OptionType::Int, 20,
       "with stream: the state starts afresh every this many segments (the context a row can reach back: "
       "stream_reset x seq_len tokens; it also bounds full attention's growing KV cache). Checkpoints fall on "
       "these boundaries, so a resumed run restarts from a fresh state exactly as the original did",
       1, 1e9},
      {"schedule", OptionType::String, "cosine",
       "learning rate: cosine (linear warm-up to lr, cosine decay to lr * min_lr_ratio) or noam (Vaswani et al. 2017 "
       "eq. 3: lr * d_model^-0.5 * min(s^-0.5, s * warmup^-1.5), lr a factor: 1 = the paper, 2 = tensor2tensor v2)",
       -1e300, 1e300, {"cosine", "noam"}},
      {"label_smoothing", OptionType::Float, 0.0,
       "train on cross-entropy against targets smoothed as tensor2tensor does (1 - e on the target, e / (V - 1) on "
       "the others; the paper: 0.1); the logged loss stays the plain cross-entropy", 0.0, 0.99},
      {"tensorboard", OptionType::Bool, false,
       "also write every metrics line's numbers as TensorBoard scalars (train/<key>, valid/<key>) to "
       "events.out.tfevents.* in the run directory, a new file per call; a resumed run's file starts with a "
       "SessionLog START so TensorBoard drops the later steps of the earlier one"},
      {"keep_checkpoints", OptionType::Int, 0,
       "also keep the weights of the last N checkpoints in checkpoints/step_<N>.safetensors, for `longseq average` "
       "(the paper averages the last 5); 0 = only the latest", 0, 1e6},
      {"batch_tokens", OptionType::Int, 4096,
       "encoder_decoder: sentence pairs of similar length per micro-batch, up to this many padded source + target "
       "tokens (the paper: about 25000 + 25000 per step over 8 GPUs); it replaces batch_size there, and seq_len is "
       "the longest side in tokens a training pair may have", 16, 1e9},
      {"bleu_sentences", OptionType::Int, 500,
       "encoder_decoder: validation sentences decoded greedily for valid_bleu at each validation; 0 = all", 0, 1e9},
      {"time_limit", OptionType::Float, 0.0,
       "stop (with a checkpoint) after this many seconds of training; 0 = no limit", 0.0, 1e9},
  };
  return s;
}

namespace {

// model.type = encoder_decoder builds the paper's fixed layout (Vaswani et al. 2017, sec. 3): the keys that would
// change it are refused rather than ignored.
void check_encoder_decoder_keys(const Json& j, const ModelConfig& c) {
  auto refuse = [](const std::string& key, const std::string& why) {
    throw Error("model." + key + ": " + why + " (model.type = encoder_decoder)");
  };
  if (!j["layers"].empty()) refuse("layers", "not read; model.mixer sets every encoder layer");
  if (j["block"] != "standard") refuse("block", "not read; model.norm chooses post-norm or pre-norm layers");
  if (j["ff"] != "dense") refuse("ff", "the feed-forward is the paper's dense ReLU layer (sec. 3.3)");
  if (j["ff_activation"] != "auto" && j["ff_activation"] != "relu")
    refuse("ff_activation", "the feed-forward is max(0, x W1 + b1) W2 + b2 (sec. 3.3); use auto or relu");
  if (c.positions != "sinusoidal") refuse("positions", "the model adds sinusoids (sec. 3.5); use sinusoidal");
  if (!c.tie_embeddings) refuse("tie_embeddings", "the embedding is shared three ways (sec. 3.4); use true");
  if (c.reversible || c.ff_chunks > 1) refuse("reversible/ff_chunks", "not implemented for the encoder-decoder");
  validate(encoder_decoder_config(c, c.vocab_size - 3));  // the vocabulary is checked against the tokenizer later
}

// The CLS vector takes one more position than train.seq_len: learned positions must reach it.
void check_cls_positions(const RunConfig& c) {
  const Json& m = c.model;
  const int64_t T = c.train["seq_len"];
  if (m["pooling"] == "cls" && m["positions"] == "learned" && T + 1 > m["max_len"].get<int64_t>())
    throw Error("model.pooling = cls prepends one position: train.seq_len + 1 = " + std::to_string(T + 1) +
                " exceeds model.max_len = " + std::to_string(m["max_len"].get<int64_t>()) + " of the learned positions");
}

// data.corpus listops (lra.md sec. 1): LRA's fixed vocabulary and classes, and lengths the model can read whole.
void check_listops_keys(const RunConfig& c) {
  const Json &m = c.model, &d = c.data, &t = c.train;
  if (d["tokenizer"] != "byte" || !d["spm_model"].get<std::string>().empty())
    throw Error("data.tokenizer is not read by data.corpus listops (LRA's tokenization: 15 fixed tokens, "
                "docs/lra.md); leave data.tokenizer and data.spm_model unset");
  if (m["vocab_size"].get<int64_t>() != kListOpsVocab)
    throw Error("model.vocab_size = " + std::to_string(m["vocab_size"].get<int64_t>()) + ", but data.corpus listops "
                "has 17 ids (pad 0, 15 tokens, out-of-vocabulary 16): set model.vocab_size to 17");
  if (m["num_classes"].get<int64_t>() != kListOpsClasses)
    throw Error("model.num_classes = " + std::to_string(m["num_classes"].get<int64_t>()) +
                ", but ListOps answers are the digits 0..9: set model.num_classes to 10");
  const int64_t lo = d["listops_min_length"], hi = d["listops_max_length"], T = t["seq_len"];
  if (d["path"].get<std::string>().empty()) {
    if (lo + 1 >= hi)
      throw Error("data.listops_min_length = " + std::to_string(lo) + " and data.listops_max_length = " +
                  std::to_string(hi) + " leave no length strictly between them");
    // The answer depends on every token: a truncated tree is a different question with the old label.
    if (T < hi - 1)
      throw Error("train.seq_len = " + std::to_string(T) + " would truncate ListOps trees of up to " +
                  std::to_string(hi - 1) + " tokens (data.listops_max_length = " + std::to_string(hi) +
                  "); set train.seq_len to at least " + std::to_string(hi - 1) + " (LRA: 2000)");
  }
  check_cls_positions(c);
}

// data.corpus pathfinder (lra.md sec. 1): pixels as tokens (vocab 256), two classes, whole images.
void check_pathfinder_keys(const RunConfig& c) {
  const Json &m = c.model, &d = c.data;
  if (d["tokenizer"] != "byte" || !d["spm_model"].get<std::string>().empty())
    throw Error("data.tokenizer is not read by data.corpus pathfinder (tokens are pixel values 0..255); leave "
                "data.tokenizer and data.spm_model unset");
  if (m["vocab_size"].get<int64_t>() != kPathfinderVocab)
    throw Error("model.vocab_size = " + std::to_string(m["vocab_size"].get<int64_t>()) +
                ", but data.corpus pathfinder reads pixel values 0..255: set model.vocab_size to 256");
  if (m["num_classes"].get<int64_t>() != kPathfinderClasses)
    throw Error("model.num_classes = " + std::to_string(m["num_classes"].get<int64_t>()) +
                ", but Pathfinder answers connected or not: set model.num_classes to 2");
  const int64_t W = d["pathfinder_size"], T = c.train["seq_len"];
  if (W != 32 && W != 64 && W != 128)
    throw Error("data.pathfinder_size = " + std::to_string(W) + " is not one of 32, 64, 128");
  // Truncation would cut off the bottom rows, and with them, often, a marker.
  if (d["path"].get<std::string>().empty() && T < W * W)
    throw Error("train.seq_len = " + std::to_string(T) + " would truncate " + std::to_string(W) + " x " +
                std::to_string(W) + " images; set train.seq_len to " + std::to_string(W * W));
  check_cls_positions(c);
}

// data.corpus imdb, cifar10, aan (lra.md sec. 1): LRA's fixed byte or pixel vocabulary and classes, and the
// two-tower model for the pairs of aan (an empty data.path is the reader's error, so a config prints without it).
void check_file_corpus_keys(const RunConfig& c, const FileCorpusInfo& info) {
  const Json &m = c.model, &d = c.data;
  const std::string corpus = info.name;
  if (d["tokenizer"] != "byte" || !d["spm_model"].get<std::string>().empty())
    throw Error("data.tokenizer is not read by data.corpus " + corpus + " (LRA's " +
                (info.vocab == kPixelVocab ? "gray values" : "bytes + 1") + ", docs/lra.md); leave data.tokenizer "
                "and data.spm_model unset");
  if (m["vocab_size"].get<int64_t>() != info.vocab)
    throw Error("model.vocab_size = " + std::to_string(m["vocab_size"].get<int64_t>()) + ", but data.corpus " + corpus +
                " has " + std::to_string(info.vocab) + " ids (" +
                (info.vocab == kPixelVocab ? "gray values 0..255" : "pad 0, bytes 1..256") +
                "): set model.vocab_size to " + std::to_string(info.vocab));
  if (m["num_classes"].get<int64_t>() != info.classes)
    throw Error("model.num_classes = " + std::to_string(m["num_classes"].get<int64_t>()) + ", but data.corpus " +
                corpus + " has " + std::to_string(info.classes) + " classes: set model.num_classes to " +
                std::to_string(info.classes));
  if (info.pairs && !m["dual_encoder"].get<bool>())
    throw Error("data.corpus " + corpus + " classifies pairs of documents: set model.dual_encoder to true");
  check_cls_positions(c);
}

}  // namespace

EncoderDecoderConfig encoder_decoder_config(const ModelConfig& c, int64_t tokenizer_vocab) {
  EncoderDecoderConfig e;
  e.vocab_size = c.vocab_size;
  e.d_model = c.d_model, e.n_heads = c.n_heads, e.n_layers = c.n_layers, e.d_ff = c.d_ff;
  e.dropout = c.dropout;
  e.post_norm = c.post_norm;
  e.encoder_mixer = c.layers.at(0);
  e.decoder_mixer = c.decoder_mixer;
  e.recurrence_steps = c.recurrence_steps, e.act = c.act, e.act_epsilon = c.act_epsilon;
  e.act_loss_weight = c.act_loss_weight, e.act_bias_init = c.act_bias_init, e.act_accumulated = c.act_accumulated;
  // The specials follow the tokenizer's ids (docs/translation.md): pad, bos, eos.
  e.pad_id = tokenizer_vocab, e.bos_id = tokenizer_vocab + 1;
  if (tokenizer_vocab + 3 != c.vocab_size)
    throw Error("model.vocab_size = " + std::to_string(c.vocab_size) + ", but model.type = encoder_decoder needs the "
                "tokenizer's " + std::to_string(tokenizer_vocab) + " symbols plus pad, bos and eos: set it to " +
                std::to_string(tokenizer_vocab + 3));
  return e;
}

ModelConfig ModelConfig::from_json(const Json& raw) {
  Json j = validate_options(raw, model_schema(), "model");
  ModelConfig c;
  c.type = j["type"];
  c.vocab_size = j["vocab_size"];
  c.d_model = j["d_model"];
  c.n_heads = j["n_heads"];
  c.n_layers = j["n_layers"];
  c.d_ff = j["d_ff"].get<int64_t>() == 0 ? 4 * c.d_model : j["d_ff"].get<int64_t>();
  c.max_len = j["max_len"];
  c.positions = j["positions"];
  c.dropout = j["dropout"];
  c.reversible = j["reversible"];
  c.ff_chunks = j["ff_chunks"];
  c.tie_embeddings = j["tie_embeddings"];
  c.output_modules = j["output_modules"];
  if (c.output_modules > 0 && c.type != "decoder_lm")
    throw Error("model.output_modules (the sparse loss layer) is implemented for model.type = decoder_lm only");
  if (c.output_modules > 0 && c.vocab_size % c.output_modules != 0)
    throw Error("model.output_modules = " + std::to_string(c.output_modules) + " must divide model.vocab_size = " +
                std::to_string(c.vocab_size) + " (each module gives vocab_size / modules logits)");
  c.recurrence_steps = j["recurrence_steps"];
  c.act = j["act"];
  c.act_epsilon = j["act_epsilon"];
  c.act_loss_weight = j["act_loss_weight"];
  c.act_bias_init = j["act_bias_init"];
  c.act_accumulated = j["act_update"].get<std::string>() == "accumulated";
  const std::string act_fn = j["ff_activation"];
  c.ff_activation = act_fn != "auto" ? act_fn : c.type == "perceiver_ar" ? "squared_relu" : "gelu";
  c.latents = j["latents"];
  c.reset_latents = j["reset_latents"];
  c.context_dropout = j["context_dropout"];
  c.rotary_fraction = j["rotary_fraction"];
  c.rotary_max_wavelength = j["rotary_max_wavelength"];
  c.z_loss = j["z_loss"];
  if (c.act && c.recurrence_steps < 1)
    throw Error("model.act needs model.recurrence_steps >= 1 (the cap on the steps a position may take)");
  if (c.recurrence_steps > 0 && c.reversible)
    throw Error("model.recurrence_steps needs model.reversible = false: the reversible stack keeps one pass over its "
                "blocks, not a recurrence");
  if (c.recurrence_steps > 0 && c.positions == "learned")
    throw Error("model.recurrence_steps adds sinusoidal coordinates at every step: use model.positions = sinusoidal "
                "or none, not learned");
  if (c.positions == "rotary" && c.type != "perceiver_ar")
    throw Error("model.positions = rotary is implemented for model.type = perceiver_ar only; use sinusoidal, "
                "learned or none");
  if (c.type == "perceiver_ar") {
    if (c.reversible || c.recurrence_steps > 0)
      throw Error("model.type = perceiver_ar takes neither model.reversible nor model.recurrence_steps");
    if (c.reset_latents >= c.latents)
      throw Error("model.reset_latents = " + std::to_string(c.reset_latents) + " must be less than model.latents = " +
                  std::to_string(c.latents) + ": the refill pass leaves room for the tokens after it");
  }
  c.num_classes = j["num_classes"];
  c.pooling = j["pooling"];
  c.classifier_hidden = j["classifier_hidden"];
  c.dual_encoder = j["dual_encoder"];
  if (c.dual_encoder && c.type != "encoder_classifier")
    throw Error("model.dual_encoder is an option of model.type = encoder_classifier");
  if (c.dual_encoder && c.classifier_hidden == 1)
    throw Error("model.classifier_hidden = 1 with model.dual_encoder leaves Dense(classifier_hidden / 2) no units: "
                "use 0 (a linear head) or at least 2");
  c.decoder_mixer = parse_mixer_spec(j["decoder_mixer"], "model.decoder_mixer");
  c.post_norm = j["norm"] == "post";
  if (c.d_model % c.n_heads != 0)
    throw Error("model.d_model = " + std::to_string(c.d_model) +
                " must be a multiple of model.n_heads = " + std::to_string(c.n_heads));
  const Json& layers = j["layers"];
  if (!layers.is_array()) throw Error("model.layers must be a list of mixer or block specs");
  // One layer: a block spec, and the mixer spec when the block kind runs a mixer.
  const FfnSpec default_ff = parse_ffn_spec(j["ff"], "model.ff");
  // One layer: a block spec, and the mixer spec (with its optional "ff") when the block kind runs a mixer.
  auto add_layer = [&](const BlockSpec& block, const Json& mixer, const std::string& where) {
    c.blocks.push_back(block);
    const bool uses_mixer = find_block(block.name).uses_mixer;
    Json m = mixer;
    FfnSpec ff = default_ff;
    if (m.is_object() && m.contains("ff")) {
      ff = parse_ffn_spec(m["ff"], where + ".ff");
      m.erase("ff");
    }
    c.layers.push_back(uses_mixer ? parse_mixer_spec(m, where) : MixerSpec{});
    c.ffns.push_back(uses_mixer ? ff : FfnSpec{});  // a block kind with its own layer has no feed-forward kind
  };
  if (layers.empty()) {
    const BlockSpec block = parse_block_spec(j["block"], "model.block");
    for (int64_t i = 0; i < c.n_layers; ++i) add_layer(block, j["mixer"], "model.mixer");
  } else {
    for (size_t i = 0; i < layers.size(); ++i) {
      const std::string where = "model.layers[" + std::to_string(i) + "]";
      if (layers[i].is_object() && layers[i].contains("block")) {  // {"block": kind, options}
        Json spec = layers[i];
        if (!spec["block"].is_string()) throw Error(where + ".block must be a block kind's name, got " +
                                                    json_excerpt(spec["block"]));
        const std::string kind = spec["block"];
        spec.erase("block");
        if (find_block(kind).uses_mixer) {  // the other keys are the mixer's spec
          add_layer(parse_block_spec(kind, where + ".block"), spec, where);
        } else {  // the other keys are the block's options
          if (spec.contains("name"))
            throw Error(where + ": block " + kind + " runs no mixer, so \"name\" (a mixer) does not apply; give "
                        "the block's options only");
          spec["name"] = kind;
          add_layer(parse_block_spec(spec, where), Json(), where);
        }
      } else {
        add_layer(BlockSpec{}, layers[i], where);
      }
    }
    c.n_layers = static_cast<int64_t>(layers.size());
  }
  // A mixer named for a stack whose block kinds run none would be ignored: refuse it (the default block is gss).
  if (layers.empty() && !find_block(c.blocks[0].name).uses_mixer && j["mixer"] != "full")
    throw Error("model.mixer = " + json_excerpt(j["mixer"]) + " is read by no layer: model.block = " +
                c.blocks[0].name + " has a layer of its own; set model.block to standard to run the mixer");
  if (default_ff.name != "dense" &&
      std::none_of(c.blocks.begin(), c.blocks.end(), [](const BlockSpec& b) { return find_block(b.name).uses_mixer; }))
    throw Error("model.ff = " + default_ff.name + " applies to no layer: every layer's block kind has its own layer, "
                "no standard feed-forward");
  // A per-layer list holds one value or one per layer: a longer list would be cut silently.
  for (size_t i = 0; i < c.layers.size(); ++i)
    for (const auto& s : c.layers[i].name.empty() ? Schema{} : find_mixer(c.layers[i].name).schema) {
      const size_t n = s.per_layer ? c.layers[i].options[s.name].size() : 1;
      if (n == 0 || (n > 1 && n != c.layers.size()))
        throw Error((layers.empty() ? std::string("model.mixer") : "model.layers[" + std::to_string(i) + "]") + "." +
                    s.name + " has " + std::to_string(n) + " entries but the model has " +
                    std::to_string(c.layers.size()) + " layers: give one value for every layer, or one per layer");
    }
  // The language models are causal; the classifier and the translation encoder (model.mixer) are not.
  const bool causal = c.type != "encoder_classifier" && c.type != "encoder_decoder";
  for (size_t i = 0; i < c.layers.size(); ++i) {
    const auto& block = find_block(c.blocks[i].name);
    const auto mixer = block.uses_mixer ? mixer_properties(c.layers[i]) : MixerInfo{};
    const bool ok = block.uses_mixer ? (causal ? mixer.supports_causal : mixer.supports_bidirectional)
                                     : (causal ? block.supports_causal : block.supports_bidirectional);
    if (!ok)
      throw Error("model layer " + std::to_string(i) + ": " + (block.uses_mixer ? "mixer " : "block ") +
                  c.layer_name(i) + " has no " + (causal ? "causal" : "bidirectional") +
                  " form, which model.type = " + c.type + " needs");
    if (c.ff_chunks > 1 && !find_ffn(c.ffns[i].name).not_sliceable.empty())
      throw Error("model layer " + std::to_string(i) + ": feed-forward " + c.ffns[i].name + " cannot run over "
                  "model.ff_chunks = " + std::to_string(c.ff_chunks) + " slices: " +
                  find_ffn(c.ffns[i].name).not_sliceable + "; set model.ff_chunks = 1");
    if (c.reversible && !find_ffn(c.ffns[i].name).not_reversible.empty())
      throw Error("model layer " + std::to_string(i) + ": feed-forward " + c.ffns[i].name + " cannot join "
                  "model.reversible = true: " + find_ffn(c.ffns[i].name).not_reversible);
    if (c.type == "perceiver_ar" && c.ffns[i].name != "dense")
      throw Error("model layer " + std::to_string(i) + ": model.type = perceiver_ar builds dense feed-forwards; "
                  "feed-forward " + c.ffns[i].name + " is not implemented there");
    if (c.reversible && !block.not_reversible.empty())
      throw Error("model layer " + std::to_string(i) + ": block " + block.name + " cannot join model.reversible = "
                  "true: " + block.not_reversible);
    if (c.type == "perceiver_ar" && !block.uses_mixer)
      throw Error("model layer " + std::to_string(i) + ": model.type = perceiver_ar builds its latent layers as "
                  "standard blocks; block " + block.name + " is not one");
  }
  if (c.type == "encoder_decoder") check_encoder_decoder_keys(j, c);
  return c;
}

Json RunConfig::to_json() const { return Json{{"model", model}, {"data", data}, {"train", train}}; }

RunConfig RunConfig::from_json(const Json& j) {
  if (!j.is_object()) throw Error("a config must be a JSON object with model, data and train sections");
  for (auto it = j.begin(); it != j.end(); ++it)
    if (it.key() != "model" && it.key() != "data" && it.key() != "train")
      throw Error("unknown key " + it.key() + "; valid keys: model, data, train");
  RunConfig c;
  c.model = validate_options(j.value("model", Json::object()), model_schema(), "model");
  ModelConfig::from_json(c.model);  // checks mixers and cross-key rules
  c.data = validate_options(j.value("data", Json::object()), data_schema(), "data");
  c.train = validate_options(j.value("train", Json::object()), train_schema(), "train");
  for (const char* generated : {"recall", "expressions", "chains"}) {
    const std::string name = generated;
    if (c.data["corpus"] == name && c.data["tokenizer"] != "byte")
      throw Error("data.corpus " + name + " is scored byte by byte: it needs data.tokenizer byte");
    if (c.data["corpus"] == name && !c.data["path"].get<std::string>().empty())
      throw Error("data.path is not read by data.corpus " + name + " (the program generates it); leave it empty");
  }
  if (c.data["tokenizer"] == "sentencepiece" && c.data["spm_model"].get<std::string>().empty())
    throw Error("data.spm_model must name a SentencePiece .model file when data.tokenizer is sentencepiece");
  const bool translation = c.model["type"] == "encoder_decoder";
  const bool parallel_corpus = c.data["corpus"] == "parallel" || c.data["corpus"] == "synthetic_translation";
  if (translation != parallel_corpus)
    throw Error(translation ? "model.type = encoder_decoder translates: data.corpus must be parallel or "
                              "synthetic_translation, got " + c.data["corpus"].get<std::string>()
                            : "data.corpus = " + c.data["corpus"].get<std::string>() +
                                  " holds sentence pairs: it needs model.type = encoder_decoder");
  if (translation && c.train["stream"].get<bool>())
    throw Error("train.stream carries a language model's state along a stream of text; model.type = encoder_decoder "
                "trains on independent sentence pairs: set train.stream to false");
  if (c.data["corpus"] == "synthetic_translation" && !c.data["path"].get<std::string>().empty())
    throw Error("data.path is not read by data.corpus synthetic_translation (the program generates it); leave it "
                "empty");
  if (c.data["corpus"] == "parallel" && c.data["path"].get<std::string>().empty())
    throw Error("data.corpus parallel needs data.path: a directory with train.<source_lang>, train.<target_lang>, "
                "valid.<source_lang> and valid.<target_lang>");
  const bool classifier = c.model["type"] == "encoder_classifier";
  const bool classification_corpus = is_classification_corpus(c.data["corpus"]);
  if (classifier != classification_corpus)
    throw Error(classifier ? "model.type = encoder_classifier classifies: data.corpus must be a classification "
                             "corpus (listops, imdb, cifar10, aan, pathfinder), got " +
                                 c.data["corpus"].get<std::string>()
                           : "data.corpus = " + c.data["corpus"].get<std::string>() +
                                 " holds classified sequences: it needs model.type = encoder_classifier");
  const FileCorpusInfo* file_corpus = find_file_corpus(c.data["corpus"]);
  if (file_corpus) check_file_corpus_keys(c, *file_corpus);
  else if (c.data["corpus"] == "pathfinder") check_pathfinder_keys(c);
  else if (classification_corpus) check_listops_keys(c);
  if (c.model["dual_encoder"].get<bool>() && !(file_corpus && file_corpus->pairs))
    throw Error("model.dual_encoder classifies pairs of documents, but data.corpus " +
                c.data["corpus"].get<std::string>() + " has one sequence per example: set model.dual_encoder to "
                "false");
  // The byte tokenizer has 256 symbols; the encoder-decoder adds pad, bos and eos after them.
  const int64_t byte_vocab = translation ? 259 : 256;
  if (!classification_corpus && c.data["tokenizer"] == "byte" && c.model["vocab_size"].get<int64_t>() != byte_vocab)
    throw Error("model.vocab_size = " + std::to_string(c.model["vocab_size"].get<int64_t>()) +
                ", but data.tokenizer = byte has 256 symbols" + (translation ? " and the translation model adds "
                "pad, bos and eos" : "") + ": set model.vocab_size to " + std::to_string(byte_vocab));
  const bool noam = c.train["schedule"] == "noam";
  if (noam && c.train["lr"].get<double>() < 0.05)
    throw Error("train.lr = " + json_excerpt(c.train["lr"]) + " with train.schedule = noam: there train.lr is the "
                "factor on the paper's formula d_model^-0.5 min(s^-0.5, s warmup^-1.5) (1 = the paper, 2 = "
                "tensor2tensor v2), so this would train at a tiny fraction of it; set train.lr to about 1");
  // A warm-up that lasts the whole run never reaches the cosine, so the final rate would not be lr * min_lr_ratio.
  if (!noam && c.train["warmup"].get<int64_t>() >= c.train["steps"].get<int64_t>())
    throw Error("train.warmup = " + std::to_string(c.train["warmup"].get<int64_t>()) +
                " must be less than train.steps = " + std::to_string(c.train["steps"].get<int64_t>()) +
                ": the schedule warms up to train.lr, then decays to lr * min_lr_ratio at the last step; "
                "lower train.warmup (0 = none)");
  if (c.train["eval_stride"].get<int64_t>() > c.train["seq_len"].get<int64_t>())
    throw Error("train.eval_stride = " + std::to_string(c.train["eval_stride"].get<int64_t>()) +
                " exceeds train.seq_len = " + std::to_string(c.train["seq_len"].get<int64_t>()));
  if (c.model["positions"] == "learned" && c.train["seq_len"].get<int64_t>() > c.model["max_len"].get<int64_t>())
    throw Error("train.seq_len exceeds model.max_len with learned positions");
  if (c.model["type"] == "perceiver_ar" && c.train["stream"].get<bool>())
    throw Error("train.stream needs a model that scores every position; model.type = perceiver_ar scores its "
                "latents only");
  if (c.train["stream"].get<bool>()) {
    const int64_t reset = c.train["stream_reset"], T = c.train["seq_len"];
    if (c.train["checkpoint_every"].get<int64_t>() % reset != 0)
      throw Error("train.checkpoint_every = " + std::to_string(c.train["checkpoint_every"].get<int64_t>()) +
                  " must be a multiple of train.stream_reset = " + std::to_string(reset) +
                  " with train.stream: checkpoints fall where the carried state starts afresh, so a resumed run is "
                  "exact");
    if (c.model["positions"] == "learned" && reset * T > c.model["max_len"].get<int64_t>())
      throw Error("train.stream_reset x train.seq_len = " + std::to_string(reset * T) +
                  " positions exceed model.max_len = " + std::to_string(c.model["max_len"].get<int64_t>()) +
                  " of the learned positions");
  }
  return c;
}

Json parse_json_text(const std::string& text, const std::string& source) { return parse_json(text, source); }

RunConfig load_run_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read config file " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return RunConfig::from_json(parse_json_text(ss.str(), path));
  } catch (const Error& e) {
    const std::string msg = e.what();
    if (msg.rfind(path, 0) == 0) throw;
    throw Error(path + ": " + msg);
  }
}

const char* default_config_text() {
  return R"({
  "model": {"type": "decoder_lm", "vocab_size": 256, "d_model": 128, "n_heads": 4,
            "n_layers": 4, "d_ff": 512, "positions": "sinusoidal", "block": "gss"},
  "data":  {"corpus": "pydoc", "tokenizer": "byte"},
  "train": {"steps": 1200, "batch_size": 2, "seq_len": 2048, "lr": 2e-3, "warmup": 60,
            "eval_every": 300, "eval_batches": 8, "log_every": 10, "checkpoint_every": 300,
            "time_limit": 360}
})";
}

void override_mixer_options(ModelConfig& cfg, const Json& overrides, const std::string& where) {
  if (!overrides.is_object()) throw Error(where + ": mixer options must be an object, got " + json_excerpt(overrides));
  ModelConfig out = cfg;  // changed as a whole or not at all
  for (const auto& kv : overrides.items()) {
    bool used = false;
    std::vector<std::string> mixers;
    for (auto& layer : out.layers) {
      if (layer.name.empty()) continue;  // a block kind without a mixer
      const auto& info = find_mixer(layer.name);
      mixers.push_back(layer.name);
      const bool has = std::any_of(info.schema.begin(), info.schema.end(),
                                   [&](const OptionSpec& o) { return o.name == kv.key(); });
      if (!has) continue;
      Json options = layer.options;
      options[kv.key()] = kv.value();
      layer.options = validate_options(options, info.schema, where + " (mixer " + layer.name + ")");
      used = true;
    }
    if (!used) throw Error(where + ": no layer's mixer has the option \"" + kv.key() + "\" (the layers' mixers: " +
                           join(mixers) + ")");
  }
  cfg = out;
}

Json parse_option_assignment(const std::string& text, const std::string& where, const std::string& prefix) {
  const auto eq = text.find('=');
  if (eq == std::string::npos || eq == 0) throw Error(where + " takes key=value, got \"" + prefix + text + "\"");
  const std::string key = text.substr(0, eq), value = text.substr(eq + 1);
  // Text that is JSON is parsed with bounded nesting (a deep value would overflow the stack when copied).
  Json parsed = Json::accept(value) ? parse_json(value, where + " " + prefix + key) : Json(value);
  try {
    (void)parsed.dump();
  } catch (const Json::type_error&) {
    throw Error(where + " " + prefix + key + ": the value is not valid UTF-8");
  }
  return Json{{key, parsed}};
}

}  // namespace longseq
