// SVG line charts (see longseq/plot.h).
#include "longseq/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

namespace longseq {

namespace {

// Colours far apart from one another (Okabe-Ito's eight, then eight more of distinct hue and lightness).
const char* const kColors[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
                               "#F0E442", "#882255", "#44AA99", "#999933", "#AA4499", "#6699CC", "#661100",
                               "#117733", "#888888"};
const char* const kDashes[] = {"", "7,3", "2,3", "9,3,2,3", "4,2,1,2,1,2"};
const char* const kMarkers[] = {"circle", "square", "triangle"};

std::string escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f", v);
  return b;
}

// A tick's text: 16K for multiples of 1024 from 1024 on, else the shortest of %g.
std::string tick_text(double v) {
  char b[32];
  if (v >= 1024 && std::fmod(v, 1024) == 0) std::snprintf(b, sizeof b, "%gK", v / 1024);
  else std::snprintf(b, sizeof b, "%g", v);
  return b;
}

std::vector<double> linear_ticks(double lo, double hi, int target) {
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  std::vector<double> t;
  for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step)
    t.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
  return t;
}

struct Style {
  std::string color, dash, marker;
};

void marker(std::ostringstream& os, const std::string& shape, double x, double y, const std::string& color) {
  if (shape == "square")
    os << "<rect x=\"" << num(x - 3) << "\" y=\"" << num(y - 3) << "\" width=\"6\" height=\"6\" fill=\"" << color
       << "\"/>";
  else if (shape == "triangle")
    os << "<polygon points=\"" << num(x) << "," << num(y - 4) << " " << num(x - 4) << "," << num(y + 3) << " "
       << num(x + 4) << "," << num(y + 3) << "\" fill=\"" << color << "\"/>";
  else
    os << "<circle cx=\"" << num(x) << "\" cy=\"" << num(y) << "\" r=\"3\" fill=\"" << color << "\"/>";
}

}  // namespace

std::vector<double> nice_ticks(double lo, double hi, bool log, int target) {
  if (!log || lo <= 0) return linear_ticks(lo, hi, target);
  std::vector<double> t;
  const int d0 = static_cast<int>(std::floor(std::log10(lo))), d1 = static_cast<int>(std::ceil(std::log10(hi)));
  if (d1 - d0 >= 3) {  // decades, every k-th when there are many
    const int k = std::max(1, (d1 - d0 + target - 1) / target);
    for (int d = d0; d <= d1; d += k) {
      const double v = std::pow(10.0, d);
      if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) t.push_back(v);
    }
  } else {
    for (int d = d0; d <= d1; ++d)
      for (double m : {1.0, 2.0, 5.0}) {
        const double v = m * std::pow(10.0, d);
        if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) t.push_back(v);
      }
  }
  if (t.size() < 2) return linear_ticks(lo, hi, target);  // a short range: round linear steps
  return t;
}

std::string svg_figure(const std::string& title, const std::vector<PlotPanel>& panels, int columns) {
  columns = std::max(1, std::min<int>(columns, static_cast<int>(std::max<size_t>(panels.size(), 1))));
  // One style per (group, kind): colours by group in order of appearance, dashes by kind; past the palette, the
  // marker shape changes so that no two series share a style.
  std::map<std::string, size_t> groups, kinds;
  std::map<std::pair<std::string, std::string>, Style> styles;
  std::vector<std::pair<std::string, Style>> legend;
  for (const auto& p : panels)
    for (const auto& s : p.series) {
      const auto key = std::make_pair(s.group, s.kind);
      if (styles.count(key)) continue;
      const size_t g = groups.emplace(s.group, groups.size()).first->second;
      const size_t k = kinds.emplace(s.kind, kinds.size()).first->second;
      const size_t nc = sizeof kColors / sizeof *kColors, nd = sizeof kDashes / sizeof *kDashes;
      Style st{kColors[g % nc], kDashes[k % nd], kMarkers[(g / nc + k / nd) % 3]};
      styles[key] = st;
      legend.push_back({s.label, st});
    }
  const double W = 470, H = 320, L = 70, R = 16, T = 28, B = 46, top = 34;
  const int rows = static_cast<int>((panels.size() + static_cast<size_t>(columns) - 1) / static_cast<size_t>(columns));
  const double legend_cols = 2, legend_h = 18.0 * std::ceil(static_cast<double>(legend.size()) / legend_cols) + 12;
  std::ostringstream os;
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << num(W * columns) << "\" height=\""
     << num(top + H * rows + legend_h) << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
     << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\">"
     << escape(title) << "</text>\n";
  for (size_t pi = 0; pi < panels.size(); ++pi) {
    const PlotPanel& p = panels[pi];
    const double ox = W * static_cast<double>(pi % static_cast<size_t>(columns));
    const double oy = top + H * static_cast<double>(pi / static_cast<size_t>(columns));
    double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
    for (const auto& s : p.series) {
      for (const auto& pt : s.points) {
        if (!std::isfinite(pt.first) || !std::isfinite(pt.second)) continue;
        if ((p.log_x && pt.first <= 0) || (p.log_y && pt.second <= 0)) continue;
        x0 = std::min(x0, pt.first), x1 = std::max(x1, pt.first), y0 = std::min(y0, pt.second),
        y1 = std::max(y1, pt.second);
      }
      for (const auto& u : s.unmeasured) x0 = std::min(x0, u.first), x1 = std::max(x1, u.first);
    }
    if (x0 > x1) x0 = 1, x1 = 10;
    if (y0 > y1) y0 = 1, y1 = 10;
    if (x0 == x1) x0 = p.log_x ? x0 / 2 : x0 - 1, x1 = p.log_x ? x1 * 2 : x1 + 1;
    if (y0 == y1) y0 = p.log_y ? y0 / 2 : y0 - 1, y1 = p.log_y ? y1 * 2 : y1 + 1;
    if (!p.log_y) {  // round the linear range out to ticks
      const auto t = linear_ticks(y0, y1, 5);
      const double step = t.size() > 1 ? t[1] - t[0] : 1;
      y0 = std::floor(y0 / step) * step, y1 = std::ceil(y1 / step) * step;
    }
    auto fx = [&](double x) {
      const double a = p.log_x ? std::log(x / x0) / std::log(x1 / x0) : (x - x0) / (x1 - x0);
      return ox + L + a * (W - L - R);
    };
    auto fy = [&](double y) {
      const double a = p.log_y ? std::log(y / y0) / std::log(y1 / y0) : (y - y0) / (y1 - y0);
      return oy + T + (1 - a) * (H - T - B);
    };
    os << "<g class=\"panel\" data-title=\"" << escape(p.title) << "\">\n<text x=\"" << num(ox + L) << "\" y=\""
       << num(oy + 18) << "\" font-weight=\"bold\">" << escape(p.title) << "</text>\n";
    os << "<rect x=\"" << num(ox + L) << "\" y=\"" << num(oy + T) << "\" width=\"" << num(W - L - R) << "\" height=\""
       << num(H - T - B) << "\" fill=\"none\" stroke=\"#444\"/>\n";
    for (double t : p.x_ticks.empty() ? nice_ticks(x0, x1, p.log_x) : p.x_ticks)
      os << "<line x1=\"" << num(fx(t)) << "\" y1=\"" << num(oy + T) << "\" x2=\"" << num(fx(t)) << "\" y2=\""
         << num(oy + H - B) << "\" stroke=\"#ddd\"/><text x=\"" << num(fx(t)) << "\" y=\"" << num(oy + H - B + 15)
         << "\" text-anchor=\"middle\">" << tick_text(t) << "</text>\n";
    for (double t : nice_ticks(y0, y1, p.log_y))
      os << "<line x1=\"" << num(ox + L) << "\" y1=\"" << num(fy(t)) << "\" x2=\"" << num(ox + W - R) << "\" y2=\""
         << num(fy(t)) << "\" stroke=\"#ddd\"/><text x=\"" << num(ox + L - 5) << "\" y=\"" << num(fy(t) + 4)
         << "\" text-anchor=\"end\">" << tick_text(t) << "</text>\n";
    os << "<text x=\"" << num(ox + (L + W - R) / 2) << "\" y=\"" << num(oy + H - 10) << "\" text-anchor=\"middle\">"
       << escape(p.x_label + (p.log_x ? " (log)" : "")) << "</text>\n<text transform=\"translate(" << num(ox + 14)
       << "," << num(oy + (T + H - B) / 2) << ") rotate(-90)\" text-anchor=\"middle\">"
       << escape(p.y_label + (p.log_y ? " (log)" : "")) << "</text>\n";
    for (const auto& s : p.series) {
      const Style& st = styles[{s.group, s.kind}];
      auto pts = s.points;
      pts.erase(std::remove_if(pts.begin(), pts.end(), [&](const std::pair<double, double>& q) {
                  return !std::isfinite(q.first) || !std::isfinite(q.second) || (p.log_x && q.first <= 0) ||
                         (p.log_y && q.second <= 0);
                }),
                pts.end());
      std::sort(pts.begin(), pts.end());
      os << "<g class=\"series\" data-label=\"" << escape(s.label) << "\" data-style=\"" << st.color << " "
         << (st.dash.empty() ? "solid" : st.dash) << " " << st.marker << "\" data-points=\"" << pts.size() << "\">\n";
      if (pts.size() > 1) {
        os << "<polyline fill=\"none\" stroke-width=\"1.8\" stroke=\"" << st.color << "\"";
        if (!st.dash.empty()) os << " stroke-dasharray=\"" << st.dash << "\"";
        os << " points=\"";
        for (const auto& q : pts) os << num(fx(q.first)) << "," << num(fy(q.second)) << " ";
        os << "\"/>\n";
      }
      for (const auto& q : pts) marker(os, st.marker, fx(q.first), fy(q.second), st.color);
      for (const auto& u : s.unmeasured)  // an x at the top edge where the configuration was not measured
        os << "<g class=\"unmeasured\"><title>" << escape(s.label + ": " + u.second) << "</title><text x=\""
           << num(fx(u.first)) << "\" y=\"" << num(oy + T + 12) << "\" text-anchor=\"middle\" fill=\"" << st.color
           << "\" font-weight=\"bold\">&#215;</text></g>";
      os << "</g>\n";
    }
    os << "</g>\n";
  }
  const double ly0 = top + H * rows + 8;
  for (size_t i = 0; i < legend.size(); ++i) {
    const double x = 20 + (W * columns / legend_cols) * static_cast<double>(i % 2), y = ly0 + 18.0 * static_cast<double>(i / 2);
    const Style& st = legend[i].second;
    os << "<line x1=\"" << num(x) << "\" y1=\"" << num(y) << "\" x2=\"" << num(x + 28) << "\" y2=\"" << num(y)
       << "\" stroke-width=\"2\" stroke=\"" << st.color << "\"";
    if (!st.dash.empty()) os << " stroke-dasharray=\"" << st.dash << "\"";
    os << "/>";
    marker(os, st.marker, x + 14, y, st.color);
    os << "<text x=\"" << num(x + 36) << "\" y=\"" << num(y + 4) << "\">" << escape(legend[i].first) << "</text>\n";
  }
  os << "</svg>\n";
  return os.str();
}

}  // namespace longseq
