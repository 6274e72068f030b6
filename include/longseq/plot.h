// Line charts as SVG, for the bench's figure and `longseq plot RUN`: panels in a grid, one colour per group (a
// mechanism) and one dash pattern per kind (a series variant), a marker at every measured point, marks at the top
// edge for configurations that were not measured (over a cap), axes with round ticks (1-2-5 or decades on log
// axes). Each series is a <g class="series"> with data-label and data-style attributes, so a test can read it back.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace longseq {

struct PlotSeries {
  std::string label;  // the legend's text
  std::string group;  // series of one group share a colour (e.g. the mechanism)
  std::string kind;   // series of one kind share a dash pattern (e.g. "fused", "reference")
  std::vector<std::pair<double, double>> points;  // (x, y), drawn in x order
  std::vector<std::pair<double, std::string>> unmeasured;  // (x, why): marked at the panel's top edge
};

struct PlotPanel {
  std::string title, x_label, y_label;
  bool log_x = false, log_y = false;
  std::vector<double> x_ticks;  // where to put x ticks (e.g. the measured lengths); empty = round values
  std::vector<PlotSeries> series;
};

// Round tick values covering [lo, hi]: 1-2-5 steps on a linear axis, decades (or 1-2-5 within a short range) on a
// log axis; about `target` of them.
std::vector<double> nice_ticks(double lo, double hi, bool log, int target = 5);

// The figure: `title` on top, panels `columns` wide, one legend below listing every (group, kind) once.
std::string svg_figure(const std::string& title, const std::vector<PlotPanel>& panels, int columns);

}  // namespace longseq

namespace longseq {

// A run's metrics.jsonl drawn: training and validation loss against steps and against wall time (bits per byte for
// the language models, nats per token otherwise), and validation BLEU (translation) or accuracy where logged.
// Errors name the run directory when it has no metrics.
std::string plot_run_svg(const std::string& run_dir);

}  // namespace longseq
