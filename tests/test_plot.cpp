// SVG line charts: every series drawn with all its points and a style of its own, round ticks, a run's curves.
#include <gtest/gtest.h>

#include <regex>
#include <set>

#include "helpers.h"
#include "longseq/common.h"
#include "longseq/plot.h"
#include "longseq/runtime.h"
#include "longseq/train.h"

using namespace longseq;

namespace plot_test {

struct DrawnSeries {
  std::string label, style;
  int points = 0, markers = 0;
};

// The <g class="series"> elements of an SVG, read back: their attributes and the markers drawn inside.
std::vector<DrawnSeries> drawn_series(const std::string& svg) {
  std::vector<DrawnSeries> out;
  const std::regex open("<g class=\"series\" data-label=\"([^\"]*)\" data-style=\"([^\"]*)\" data-points=\"(\\d+)\">");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), open); it != std::sregex_iterator(); ++it) {
    DrawnSeries s{(*it)[1], (*it)[2], std::stoi((*it)[3]), 0};
    const size_t body = static_cast<size_t>(it->position() + it->length());
    const std::string inside = svg.substr(body, svg.find("</g>\n", body) - body);
    for (const char* m : {"<circle", "<rect", "<polygon"})
      for (size_t at = inside.find(m); at != std::string::npos; at = inside.find(m, at + 1)) ++s.markers;
    out.push_back(s);
  }
  return out;
}

TEST(Plot, EverySeriesHasItsPointsAndAStyleOfItsOwn) {
  PlotPanel p;
  p.title = "t";
  p.log_x = p.log_y = true;
  for (int g = 0; g < 20; ++g)  // more mechanisms than colours, two variants each
    for (const char* kind : {"fused", "reference"}) {
      PlotSeries s;
      s.label = "m" + std::to_string(g) + " " + kind;
      s.group = "m" + std::to_string(g);
      s.kind = kind;
      for (int i = 0; i < 1 + g % 3; ++i) s.points.push_back({1024.0 * (1 << i), 0.01 * (g + 1) * (i + 1)});
      if (g % 4 == 0) s.unmeasured.push_back({1024.0 * 16, "over memory cap"});
      p.series.push_back(s);
    }
  p.series[0].points.push_back({-1, 1});  // not drawable on a log axis: left out, not drawn at a wrong place
  const std::string svg = svg_figure("title & <run>", {p}, 1);
  const auto drawn = drawn_series(svg);
  ASSERT_EQ(drawn.size(), p.series.size());
  std::set<std::string> styles;
  for (size_t i = 0; i < drawn.size(); ++i) {
    const int expected = 1 + static_cast<int>(i / 2) % 3;
    EXPECT_EQ(drawn[i].points, expected) << drawn[i].label;
    EXPECT_EQ(drawn[i].markers, expected) << drawn[i].label;  // a marker at every point, one-point series too
    styles.insert(drawn[i].style);
  }
  EXPECT_EQ(styles.size(), drawn.size());  // no two series look alike
  EXPECT_NE(svg.find("title &amp; &lt;run&gt;"), std::string::npos);
  size_t crosses = 0;
  for (size_t at = svg.find("class=\"unmeasured\""); at != std::string::npos; at = svg.find("class=\"unmeasured\"", at + 1))
    ++crosses;
  EXPECT_EQ(crosses, 10u);  // groups 0, 4, 8, 12, 16, two variants each
}

TEST(Plot, TicksAreRound) {
  EXPECT_EQ(nice_ticks(1e-4, 1, true), (std::vector<double>{1e-4, 1e-3, 1e-2, 1e-1, 1}));
  EXPECT_EQ(nice_ticks(0.3, 7.6, true), (std::vector<double>{0.5, 1, 2, 5}));
  EXPECT_EQ(nice_ticks(0, 9.7, false), (std::vector<double>{0, 2, 4, 6, 8}));
  EXPECT_EQ(nice_ticks(180, 250, true, 4), (std::vector<double>{180, 200, 220, 240}));  // short log range: linear
}

TEST(Plot, RunCurvesHoldEveryLoggedStep) {
  const auto dir = longseq_test::scratch_dir("plot_run");
  longseq_test::write_text(dir + "/corpus.txt", longseq_test::sample_text(20000));
  Json j = {{"model", {{"d_model", 16}, {"n_heads", 2}, {"n_layers", 1}, {"d_ff", 32}}},
            {"data", {{"corpus", "text"}, {"path", dir + "/corpus.txt"}}},
            {"train", {{"steps", 6}, {"batch_size", 2}, {"seq_len", 32}, {"warmup", 1}, {"eval_every", 2},
                       {"eval_batches", 1}, {"log_every", 1}}}};
  auto cfg = RunConfig::from_json(j);
  train_run(&cfg, longseq_test::quiet(dir + "/run"));
  const auto drawn = drawn_series(plot_run_svg(dir + "/run"));
  ASSERT_EQ(drawn.size(), 4u);  // training and validation, against steps and against time
  EXPECT_EQ(drawn[0].points, 6);
  EXPECT_EQ(drawn[1].points, 3);  // steps 2, 4 and the final 6
  EXPECT_EQ(drawn[2].points, 6);
  EXPECT_EQ(drawn[3].points, 3);
  EXPECT_NE(drawn[0].style, drawn[1].style);
  EXPECT_THROW(plot_run_svg(dir), Error);  // not a run directory
}

}  // namespace plot_test
