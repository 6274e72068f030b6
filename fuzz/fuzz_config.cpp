// libFuzzer target: the config parser (JSON text -> RunConfig -> ModelConfig). Any
// text must be accepted or refused with a longseq::Error; an accepted config, with
// its defaults filled in, must be accepted again unchanged (what a run directory's
// config.json holds and `--resume` compares).
#include <cstdint>
#include <string>

#include "longseq/common.h"
#include "longseq/config.h"

using namespace longseq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  RunConfig cfg;
  try {
    cfg = RunConfig::from_json(parse_json_text(text, "input.json"));
  } catch (const Error&) {
    return 0;
  }
  const Json filled = cfg.to_json();
  const RunConfig again = RunConfig::from_json(parse_json_text(filled.dump(2), "config.json"));
  if (again.to_json() != filled) __builtin_trap();
  const ModelConfig m = ModelConfig::from_json(cfg.model);
  if (static_cast<int64_t>(m.layers.size()) != m.n_layers || m.d_model % m.n_heads != 0) __builtin_trap();
  return 0;
}
