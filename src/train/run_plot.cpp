// A run's curves as SVG (`longseq plot RUN`; see longseq/plot.h).
#include <map>
#include <sstream>

#include "longseq/common.h"
#include "longseq/config.h"
#include "longseq/plot.h"
#include "longseq/runtime.h"

namespace longseq {

std::string plot_run_svg(const std::string& dir) {
  const std::string path = dir + "/metrics.jsonl";
  if (!path_exists(path)) throw Error("plot: " + dir + " has no metrics.jsonl (is it a run directory?)");
  std::istringstream in(read_file(path));
  std::string line;
  std::vector<Json> steps, valids;
  std::map<int64_t, double> elapsed_at;  // validation lines carry only their step: their time is the step's
  while (std::getline(in, line)) {
    Json j = Json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number()) continue;
    if (j.contains("loss") && j["loss"].is_number()) {
      steps.push_back(j);
      if (j.contains("elapsed_s") && j["elapsed_s"].is_number())
        elapsed_at[j["step"].get<int64_t>()] = j["elapsed_s"].get<double>();
    } else if (j.contains("valid_loss") && j["valid_loss"].is_number()) {
      valids.push_back(j);
    }
  }
  if (steps.empty() && valids.empty()) throw Error("plot: " + path + " holds no training or validation lines yet");
  const bool bpb = !steps.empty() && steps[0].contains("bpb");
  const std::string train_key = bpb ? "bpb" : "loss", valid_key = bpb ? "valid_bpb" : "valid_loss";
  const std::string unit = bpb ? "bits per byte" : "nats per token";
  PlotSeries train{"training", "training", "training", {}, {}}, valid{"validation", "validation", "validation", {}, {}};
  PlotSeries train_t = train, valid_t = valid;
  for (const auto& j : steps) {
    const double x = j["step"].get<double>(), y = j.value(train_key, j["loss"].get<double>());
    train.points.push_back({x, y});
    if (j.contains("elapsed_s")) train_t.points.push_back({j["elapsed_s"].get<double>(), y});
  }
  for (const auto& j : valids) {
    if (!j.contains(valid_key) || !j[valid_key].is_number()) continue;
    const int64_t s = j["step"];
    valid.points.push_back({static_cast<double>(s), j[valid_key].get<double>()});
    // The elapsed time of the step line of the same step, or of the nearest one before it.
    auto it = elapsed_at.upper_bound(s);
    if (it != elapsed_at.begin()) valid_t.points.push_back({std::prev(it)->second, j[valid_key].get<double>()});
  }
  std::vector<PlotPanel> panels = {{unit + " against steps", "optimizer step", unit, false, false, {}, {train, valid}},
                                   {unit + " against time", "seconds since the start", unit, false, false,
                                    {}, {train_t, valid_t}}};
  for (const char* key : {"valid_bleu", "valid_accuracy"}) {
    PlotSeries s{key, key, "validation", {}, {}};
    for (const auto& j : valids)
      if (j.contains(key) && j[key].is_number()) s.points.push_back({j["step"].get<double>(), j[key].get<double>()});
    if (!s.points.empty())
      panels.push_back({std::string(key) == "valid_bleu" ? "validation BLEU" : "validation accuracy", "optimizer step",
                        key, false, false, {}, {s}});
  }
  std::string title = "run " + dir;
  if (path_exists(dir + "/config.json")) {
    const Json cfg = Json::parse(read_file(dir + "/config.json"), nullptr, false);
    if (!cfg.is_discarded() && cfg.contains("model") && cfg["model"].is_object())
      title += ": " + cfg["model"].value("type", std::string("?")) +
               (cfg["model"].value("block", Json("standard")) != "standard"  // a block kind runs no mixer of its own
                    ? ", block " + cfg["model"]["block"].dump()
                    : ", mixer " + cfg["model"].value("mixer", Json("?")).dump()) +
               ", d_model " +
               cfg["model"].value("d_model", Json("?")).dump() + ", " +
               cfg["model"].value("n_layers", Json("?")).dump() + " layers";
  }
  return svg_figure(title, panels, 2);
}

}  // namespace longseq
