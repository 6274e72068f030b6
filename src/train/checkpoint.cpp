#include "longseq/common.h"
#include "longseq/runtime.h"
#include "longseq/train.h"

namespace longseq {

LoadedRun load_run(const std::string& dir, const Json& mixer_overrides) {
  const std::string config_path = dir + "/config.json";
  if (!path_exists(dir)) throw Error("run directory " + dir + " does not exist");
  if (!path_exists(config_path)) throw Error(dir + " is not a run directory: it has no config.json");
  LoadedRun run;
  run.config = load_run_config(config_path);
  if (run.config.model["type"] == "encoder_decoder")
    throw Error(dir + " holds a translation model (model.type encoder_decoder): use `longseq translate` or `longseq "
                "eval` on it");
  run.model_config = ModelConfig::from_json(run.config.model);
  if (!mixer_overrides.empty()) override_mixer_options(run.model_config, mixer_overrides, "--mixer-option");
  if (run.config.data["tokenizer"] == "sentencepiece") run.tokenizer = load_sentencepiece(dir + "/tokenizer.model");
  else run.tokenizer = make_byte_tokenizer();
  if (run.tokenizer->vocab_size() > run.model_config.vocab_size)
    throw Error(config_path + ": model.vocab_size " + std::to_string(run.model_config.vocab_size) +
                " is smaller than the tokenizer's " + std::to_string(run.tokenizer->vocab_size()));
  run.model = make_language_model(run.model_config);
  load_module_tensors(*run.model, load_safetensors(dir + "/model.safetensors"), dir + "/model.safetensors");
  run.model->eval();
  return run;
}

}  // namespace longseq
