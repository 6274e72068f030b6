// Pathfinder (Linsley, Kim, Veerabadran, Serre 2018; Kim*, Linsley* et al., ICLR 2020) as Long Range Arena uses it
// (Tay et al. 2021; lra.md sec. 1): the procedure of snakes2.py (drewlinsley/pathfinder) rewritten — two target
// contours grown from seeds seed_distance apart, paddle by paddle with the continuity-weighted turn rule under a
// no-touch mask (retries, then the image is redrawn), distractor contours where room remains, two marker discs —
// drawn antialiased; the released layout (PNG + metadata) written and read.
//
// Deviations from snakes2, all so that the label is a property of the image a flood fill decides (docs/lra.md):
// - A contour is snakes2's chain of pivots drawn whole: snakes2 inks only the middle paddle_length of each
//   pivot-to-pivot step and leaves 2 margin pixels between paddles; here consecutive paddles join.
// - The no-touch rule is exact on the output grid: pixels of different contours (discs included) stay more than
//   `margin` pixels apart (Chebyshev), so they never touch; the marker discs are checked too (snakes2 does not).
// - Antialiasing is a box filter over antialias_scale^2 fine cells (snakes2: Lanczos), so a stroke's support is
//   exact; pixel = max(strokes, discs), rescaled so the image's maximum is 255 as scipy's imsave does, and a pixel
//   a stroke touches is at least 1.
// - Seeded: each image has its own std::mt19937_64 stream with our own uniform draws (the same on every platform).
// Cost per image: O(W^2 (redraws + distractor seed searches)); 0.3-0.5 ms at 32 px hard, 35 ms at 128 px
// (docs/lra.md).
#include <png.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>

#include "longseq/common.h"
#include "longseq/lra.h"
#include "longseq/recompute.h"
#include "longseq/runtime.h"

namespace longseq {

namespace pathfinder {  // named: the library is a unity build, so helper names must not meet other files'

using Point = std::array<double, 2>;  // (y, x) in output pixels
constexpr double kPi = 3.14159265358979323846;
constexpr int kAnyOwn = -2;  // fits(): every pixel of the shape's own contour may be near it (a marker disc)

class Rng {
 public:
  explicit Rng(uint64_t seed) : g_(seed) {}
  uint64_t below(uint64_t n) {  // uniform in [0, n) by rejection: the same draws on every platform
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = g_(); while (x >= limit);
    return x % n;
  }
  double unit() { return static_cast<double>(g_() >> 11) * 0x1.0p-53; }
  double degrees() { return (static_cast<double>(below(360)) - 180) * kPi / 180; }  // snakes2: integer degrees

 private:
  std::mt19937_64 g_;
};

// A stroke or a disc as drawn: the fine cells it covers and the output pixels those lie in.
struct Shape {
  std::vector<int32_t> cells, pixels;
  bool inside = true;  // every cell lies within the padding
};

// One image being drawn: which contour owns each output pixel, and the fine-grid geometry.
class Canvas {
 public:
  Canvas(const PathfinderOptions& o, int64_t margin)
      : W_(static_cast<int>(o.size)), aa_(static_cast<int>(o.antialias_scale)), pad_(static_cast<int>(o.padding)),
        m_(static_cast<int>(margin)), owner_(static_cast<size_t>(W_ * W_), -1), count_(owner_.size(), 0),
        last_(owner_.size(), -1) {
    // The pen: a disc of diameter w = round(thickness aa) fine cells, centred on the cell (odd w) or its corner.
    const int w = std::max(1, static_cast<int>(std::lround(o.paddle_thickness * static_cast<double>(aa_))));
    const double c = w % 2 ? 0 : 0.5, r2 = 0.25 * w * w + 1e-9;
    for (int di = -w; di <= w; ++di)
      for (int dj = -w; dj <= w; ++dj)
        if ((di - c) * (di - c) + (dj - c) * (dj - c) <= r2) pen_.push_back({di, dj});
  }
  int size() const { return W_; }

  // The segment a -> b: the cells a walk in steps of half a cell passes (8-connected, both ends included),
  // widened by the pen.
  Shape segment(Point a, Point b) const {
    std::vector<std::array<int, 2>> chain;
    const double ay = a[0] * aa_, ax = a[1] * aa_, dy = (b[0] - a[0]) * aa_, dx = (b[1] - a[1]) * aa_;
    const int n = std::max(1, static_cast<int>(std::ceil(std::hypot(dy, dx) / 0.5)));
    for (int k = 0; k <= n; ++k) {
      const double t = static_cast<double>(k) / n;
      chain.push_back({static_cast<int>(std::floor(ay + t * dy)), static_cast<int>(std::floor(ax + t * dx))});
    }
    Shape s;
    for (const auto& p : chain)
      for (const auto& o : pen_) add_cell(s, p[0] + o[0], p[1] + o[1], true);
    finish(s);
    return s;
  }

  // The cells whose centres lie within `radius` pixels of c, and the cell holding c; clipped at the image edge.
  Shape disc(Point c, double radius) const {
    Shape s;
    const double cy = c[0] * aa_, cx = c[1] * aa_, R = radius * aa_;
    for (int i = static_cast<int>(std::floor(cy - R)) - 1; i <= static_cast<int>(std::ceil(cy + R)); ++i)
      for (int j = static_cast<int>(std::floor(cx - R)) - 1; j <= static_cast<int>(std::ceil(cx + R)); ++j)
        if ((i + 0.5 - cy) * (i + 0.5 - cy) + (j + 0.5 - cx) * (j + 0.5 - cx) <= R * R) add_cell(s, i, j, false);
    add_cell(s, static_cast<int>(std::floor(cy)), static_cast<int>(std::floor(cx)), false);
    finish(s);
    return s;
  }

  // True if no pixel of `s` lies within the margin (Chebyshev) of a pixel of another contour, or of its own
  // contour other than segment `allowed` (the one it continues) or any of its own (kAnyOwn).
  bool fits(const Shape& s, int contour, int allowed) const {
    if (!s.inside) return false;
    for (int32_t q : s.pixels)
      if (!clear(q, contour, allowed)) return false;
    return true;
  }
  bool pixel_fits(Point p, int contour, int allowed) const {
    const int y = static_cast<int>(std::floor(p[0])), x = static_cast<int>(std::floor(p[1]));
    if (y < pad_ || x < pad_ || y >= W_ - pad_ || x >= W_ - pad_) return false;
    return clear(y * W_ + x, contour, allowed);
  }
  // Pixels some contour owns, widened by the margin: where no pixel of a new contour may go.
  std::vector<char> blocked() const {
    std::vector<char> b(owner_.size(), 0);
    for (int y = 0; y < W_; ++y)
      for (int x = 0; x < W_; ++x)
        if (owner_[static_cast<size_t>(y * W_ + x)] >= 0)
          for (int ry = std::max(0, y - m_); ry <= std::min(W_ - 1, y + m_); ++ry)
            for (int rx = std::max(0, x - m_); rx <= std::min(W_ - 1, x + m_); ++rx)
              b[static_cast<size_t>(ry * W_ + rx)] = 1;
    return b;
  }
  bool in_padding(int y, int x) const { return y >= pad_ && x >= pad_ && y < W_ - pad_ && x < W_ - pad_; }

  int commit(const Shape& s, int contour) {
    for (int32_t q : s.pixels) {
      owner_[static_cast<size_t>(q)] = contour;
      ++count_[static_cast<size_t>(q)];
      last_[static_cast<size_t>(q)] = next_id_;
    }
    return next_id_++;
  }
  void erase(const Shape& s) {  // a failed distractor's pixels were free before it (fits() saw to that)
    for (int32_t q : s.pixels)
      owner_[static_cast<size_t>(q)] = -1, count_[static_cast<size_t>(q)] = 0, last_[static_cast<size_t>(q)] = -1;
  }
  // Share of pixels no contour owns (snakes2 stops seeding distractors below 1%).
  double free_share() const {
    return static_cast<double>(std::count(owner_.begin(), owner_.end(), -1)) / static_cast<double>(owner_.size());
  }
  int64_t fine() const { return static_cast<int64_t>(W_) * aa_; }

 private:
  bool clear(int32_t q, int contour, int allowed) const {
    const int y = q / W_, x = q % W_;
    for (int ry = std::max(0, y - m_); ry <= std::min(W_ - 1, y + m_); ++ry)
      for (int rx = std::max(0, x - m_); rx <= std::min(W_ - 1, x + m_); ++rx) {
        const size_t r = static_cast<size_t>(ry * W_ + rx);
        const int o = owner_[r];
        if (o < 0) continue;
        if (o == contour && (allowed == kAnyOwn || (count_[r] == 1 && last_[r] == allowed))) continue;
        return false;
      }
    return true;
  }
  void add_cell(Shape& s, int i, int j, bool strict) const {
    const int F = W_ * aa_, lo = pad_ * aa_, hi = (W_ - pad_) * aa_;
    if (i < 0 || j < 0 || i >= F || j >= F) {
      if (strict) s.inside = false;
      return;
    }
    if (strict && (i < lo || j < lo || i >= hi || j >= hi)) s.inside = false;
    s.cells.push_back(i * F + j);
    s.pixels.push_back((i / aa_) * W_ + j / aa_);
  }
  static void finish(Shape& s) {
    for (auto* v : {&s.cells, &s.pixels}) {
      std::sort(v->begin(), v->end());
      v->erase(std::unique(v->begin(), v->end()), v->end());
    }
  }

  int W_, aa_, pad_, m_;
  std::vector<std::array<int, 2>> pen_;
  std::vector<int> owner_, count_, last_;
  int next_id_ = 0;
};

struct Contour {
  int id = 0;
  int paddles = 0;  // of contour_length or distractor_length
  double value = 1;  // stroke intensity before rescaling
  std::vector<Point> vertices;
  std::vector<Shape> shapes;
  double heading = 0;  // direction of the last segment, radians, atan2(dy, dx)
  int last_id = -1;
};

class Drawer {
 public:
  Drawer(const PathfinderOptions& o, Rng& rng, int64_t margin) : o_(o), rng_(rng), c_(o, margin), m_(margin) {}

  // Segment k of a contour of n paddles: snakes2's pivot steps, paddle_length + 2 margin between pivots, the first
  // and last from the seed / to the far tip paddle_length + margin (a lone paddle: paddle_length).
  double segment_length(int k, int n) const {
    const double l = static_cast<double>(o_.paddle_length), m = static_cast<double>(m_);
    if (n == 1) return l;
    return k == 0 || k == n - 1 ? l + m : l + 2 * m;
  }

  bool start(Contour& c, Point seed, double heading) {
    const double L = segment_length(0, c.paddles);
    const Point end{seed[0] + L * std::sin(heading), seed[1] + L * std::cos(heading)};
    Shape s = c_.segment(seed, end);
    if (!c_.fits(s, c.id, -1)) return false;
    c.last_id = c_.commit(s, c.id);
    c.vertices = {seed, end};
    c.shapes = {std::move(s)};
    c.heading = heading;
    return true;
  }

  // snakes2's extend_snake: candidate ends one per pixel of arc on the circle around the last vertex, weighted
  // cos^2(min(continuity |dtheta|, pi/2)) where the end pixel is free; up to max_paddle_retrial + 1 draws.
  bool extend(Contour& c) {
    const int k = static_cast<int>(c.vertices.size()) - 1;
    const double L = segment_length(k, c.paddles);
    const Point v = c.vertices.back();
    const int n = std::max(8, static_cast<int>(std::ceil(2 * kPi * L)));
    std::vector<double> cmf(static_cast<size_t>(n));
    double total = 0;
    for (int j = 0; j < n; ++j) {
      const double theta = 2 * kPi * j / n - kPi;
      double d = std::fabs(theta - c.heading);
      d = std::min(d, 2 * kPi - d);
      double w = std::cos(std::min(o_.continuity * d, kPi / 2));
      w = w * w;
      if (w > 1e-12 && !c_.pixel_fits({v[0] + L * std::sin(theta), v[1] + L * std::cos(theta)}, c.id, c.last_id))
        w = 0;
      cmf[static_cast<size_t>(j)] = total += w > 1e-12 ? w : 0;
    }
    if (total <= 0) return false;
    for (int64_t trial = 0; trial <= o_.max_paddle_retrial; ++trial) {
      const double u = rng_.unit() * total;
      const int j = static_cast<int>(std::upper_bound(cmf.begin(), cmf.end(), u) - cmf.begin());
      const double theta = 2 * kPi * std::min(j, n - 1) / n - kPi;
      const Point end{v[0] + L * std::sin(theta), v[1] + L * std::cos(theta)};
      Shape s = c_.segment(v, end);
      if (!c_.fits(s, c.id, c.last_id)) continue;
      c.last_id = c_.commit(s, c.id);
      c.vertices.push_back(end);
      c.shapes.push_back(std::move(s));
      c.heading = theta;
      return true;
    }
    return false;
  }

  // snakes2's initialize_two_seeds + two_snakes: A's seed a pixel centre whose first paddle lies in the central box
  // [2 seed_distance, W - 2 seed_distance); B's seed_distance away at a uniform angle; then both grown alternately.
  bool targets(Contour& a, Contour& b) {
    const int W = c_.size();
    const double lo = 2.0 * static_cast<double>(o_.seed_distance), hi = W - lo;
    const double l = static_cast<double>(o_.paddle_length);
    const double heading_a = rng_.degrees(), ly = l * std::sin(heading_a), lx = l * std::cos(heading_a);
    std::vector<Point> seeds;
    for (int y = 0; y < W; ++y)
      for (int x = 0; x < W; ++x) {
        const Point p{y + 0.5, x + 0.5}, q{p[0] + ly, p[1] + lx};
        if (p[0] >= lo && p[1] >= lo && p[0] < hi && p[1] < hi && q[0] >= lo && q[1] >= lo && q[0] < hi && q[1] < hi)
          seeds.push_back(p);
      }
    if (seeds.empty() || !start(a, seeds[rng_.below(seeds.size())], heading_a)) return false;
    bool placed = false;
    for (int64_t trial = 0; trial <= o_.max_paddle_retrial && !placed; ++trial) {
      const double heading_b = rng_.degrees(), angle = static_cast<double>(rng_.below(360)) * kPi / 180;
      const double sd = static_cast<double>(o_.seed_distance);
      const Point seed{std::floor(a.vertices[0][0]) + std::round(sd * std::sin(angle)) + 0.5,
                       std::floor(a.vertices[0][1]) + std::round(sd * std::cos(angle)) + 0.5};
      placed = start(b, seed, heading_b);
    }
    if (!placed) return false;
    for (int k = 1; k < a.paddles; ++k)
      if (!extend(a) || !extend(b)) return false;
    return true;
  }

  // snakes2's make_snake for a distractor: a uniform seed pixel among those whose first segment fits, then grown;
  // a contour that fails is erased.
  bool distractor(Contour& c) {
    if (c_.free_share() < 0.01) return false;
    const double heading = rng_.degrees(), L = segment_length(0, c.paddles);
    const int W = c_.size(), y0 = W / 2, x0 = W / 2;
    // A first segment from a pixel centre has the same pixels, shifted, from every pixel centre: found once.
    const Point p0{y0 + 0.5, x0 + 0.5};
    const Shape ref = c_.segment(p0, {p0[0] + L * std::sin(heading), p0[1] + L * std::cos(heading)});
    if (!ref.inside) return false;  // longer than half the window: fits nowhere
    const std::vector<char> blocked = c_.blocked();
    std::vector<Point> seeds;
    for (int y = 0; y < W; ++y)
      for (int x = 0; x < W; ++x) {
        bool ok = true;
        for (size_t i = 0; ok && i < ref.pixels.size(); ++i) {
          const int py = y + ref.pixels[i] / W - y0, px = x + ref.pixels[i] % W - x0;
          ok = c_.in_padding(py, px) && !blocked[static_cast<size_t>(py * W + px)];
        }
        if (ok) seeds.push_back({y + 0.5, x + 0.5});
      }
    if (seeds.empty()) return false;
    bool ok = start(c, seeds[rng_.below(seeds.size())], heading);
    for (int k = 1; ok && k < c.paddles; ++k) ok = extend(c);
    if (!ok)
      for (const Shape& s : c.shapes) c_.erase(s);
    return ok;
  }

  // A marker disc on contour `owner`, reserved so that later contours keep away; false if it comes near another.
  bool marker(Point p, int owner, Shape& out) {
    out = c_.disc(p, o_.marker_radius);
    if (!c_.fits(out, owner, kAnyOwn)) return false;
    c_.commit(out, owner);
    return true;
  }

  Canvas& canvas() { return c_; }

 private:
  const PathfinderOptions& o_;
  Rng& rng_;
  Canvas c_;
  int64_t m_;
};

// Box-filters the fine strokes and discs, takes the pixelwise max, rescales to 0..255 (scipy imsave's bytescale).
std::vector<uint8_t> render(const PathfinderOptions& o, const Canvas& canvas, const std::vector<Contour>& contours,
                            const Shape discs[2]) {
  const int64_t F = canvas.fine(), W = o.size, aa = o.antialias_scale;
  std::vector<float> strokes(static_cast<size_t>(F * F), 0.f), marks(strokes.size(), 0.f);
  for (const Contour& c : contours)
    for (const Shape& s : c.shapes)
      for (int32_t cell : s.cells)
        strokes[static_cast<size_t>(cell)] = std::max(strokes[static_cast<size_t>(cell)], static_cast<float>(c.value));
  for (int d = 0; d < 2; ++d)
    for (int32_t cell : discs[d].cells) marks[static_cast<size_t>(cell)] = 1.f;  // snakes2's discs: 1.0
  std::vector<double> v(static_cast<size_t>(W * W), 0);
  double vmax = 0;
  for (int64_t y = 0; y < W; ++y)
    for (int64_t x = 0; x < W; ++x) {
      double s = 0, m = 0;
      for (int64_t i = y * aa; i < (y + 1) * aa; ++i)
        for (int64_t j = x * aa; j < (x + 1) * aa; ++j)
          s += strokes[static_cast<size_t>(i * F + j)], m += marks[static_cast<size_t>(i * F + j)];
      const double p = std::max(s, m) / static_cast<double>(aa * aa);
      v[static_cast<size_t>(y * W + x)] = p;
      vmax = std::max(vmax, p);
    }
  std::vector<uint8_t> out(v.size(), 0);
  for (size_t i = 0; i < v.size(); ++i)
    if (v[i] > 0) out[i] = static_cast<uint8_t>(std::clamp(std::floor(255 * v[i] / vmax + 0.5), 1.0, 255.0));
  return out;
}

void validate(const PathfinderOptions& o) {
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw Error("pathfinder: " + what);
  };
  need(o.size >= 8 && o.size <= 1024, "size must lie in [8, 1024], got " + std::to_string(o.size));
  need(o.antialias_scale >= 1 && o.antialias_scale <= 8, "antialias_scale must lie in [1, 8]");
  need(o.padding >= 0 && 4 * o.padding < o.size, "padding must lie in [0, size / 4)");
  need(o.seed_distance >= 1 && 4 * o.seed_distance < o.size,
       "seed_distance must lie in [1, size / 4): the first seed lies in [2 seed_distance, size - 2 seed_distance)");
  need(o.paddle_length >= 1 && o.contour_length >= 1 && o.distractor_length >= 1,
       "paddle_length, contour_length and distractor_length must be at least 1");
  need(o.num_distractor_snakes >= 0 && o.max_paddle_retrial >= 0 && o.max_distractor_contour_retrial >= 0,
       "num_distractor_snakes and the retrial counts must not be negative");
  need(!o.margins.empty(), "margins must not be empty");
  for (int64_t m : o.margins) need(m >= 1 && m <= 16, "a margin must lie in [1, 16] (pixels kept between contours)");
  need(o.paddle_thickness > 0 && o.marker_radius > 0 && o.continuity > 0 && o.snake_contrast > 0 &&
           o.paddle_contrast > 0,
       "paddle_thickness, marker_radius, continuity and the contrasts must be positive");
}

std::string python_float(double v) {  // str() of a Python float, as snakes2's metadata holds them: 1.0, 0.5
  char text[32];
  std::snprintf(text, sizeof text, v == std::floor(v) ? "%.1f" : "%g", v);
  return text;
}

void write_plain(const std::string& path, const void* data, size_t n) {  // no fsync: 200,000 small images
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw Error("cannot write " + path + ": " + std::strerror(errno));
  const bool ok = std::fwrite(data, 1, n, f) == n;
  if (std::fclose(f) != 0 || !ok) throw Error("cannot write " + path + ": " + std::strerror(errno));
}

bool is_number(const std::string& s) {
  return !s.empty() && s.size() < 10 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::vector<std::string> split_columns(const std::string& line) {  // LRA splits on ' '; tabs tolerated
  std::vector<std::string> out;
  std::string cur;
  for (char c : line) {
    if (c == ' ' || c == '\t' || c == '\r') {
      if (!cur.empty()) out.push_back(cur), cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

void append_utf8(std::string& s, uint32_t c) {
  if (c < 0x80) {
    s += static_cast<char>(c);
  } else if (c < 0x800) {
    s += static_cast<char>(0xC0 | (c >> 6)), s += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    s += static_cast<char>(0xE0 | (c >> 12)), s += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (c >> 18)), s += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((c >> 6) & 0x3F)), s += static_cast<char>(0x80 | (c & 0x3F));
  }
}

// A .npy file (NumPy format 1.0-3.0) holding a 1-D or 2-D string array ('<U', '>U', '|S'): its rows.
std::vector<std::vector<std::string>> parse_npy(const std::string& path, const std::string& b) {
  auto fail = [&](const std::string& why) -> void {
    throw Error(path + ": a NumPy .npy file, but " + why + " (read: 1-D or 2-D string arrays, '<U..' or '|S..')");
  };
  if (b.size() < 10) fail("it ends inside its header");
  const int major = static_cast<unsigned char>(b[6]);
  const size_t at = major == 1 ? 10 : 12;
  if (major < 1 || major > 3 || b.size() < at) fail("its format version " + std::to_string(major) + " is unknown");
  size_t hlen = static_cast<unsigned char>(b[8]) | static_cast<size_t>(static_cast<unsigned char>(b[9])) << 8;
  if (major > 1)
    hlen |= static_cast<size_t>(static_cast<unsigned char>(b[10])) << 16 |
            static_cast<size_t>(static_cast<unsigned char>(b[11])) << 24;
  if (b.size() < at + hlen) fail("it ends inside its header");
  const std::string h = b.substr(at, hlen);
  auto value_of = [&](const std::string& key) {
    const size_t k = h.find("'" + key + "'");
    if (k == std::string::npos) fail("its header lacks '" + key + "'");
    size_t v = h.find(':', k);
    if (v == std::string::npos) fail("its header is malformed at '" + key + "'");
    ++v;
    while (v < h.size() && h[v] == ' ') ++v;
    return v;
  };
  size_t d = value_of("descr");
  if (d >= h.size() || (h[d] != '\'' && h[d] != '"')) fail("its descr is not a simple type");
  const size_t d_end = h.find(h[d], d + 1);
  if (d_end == std::string::npos) fail("its descr is not closed");
  const std::string descr = h.substr(d + 1, d_end - d - 1);
  if (descr.size() < 3 || (descr[1] != 'U' && descr[1] != 'S') || !is_number(descr.substr(2)))
    fail("its dtype is '" + descr + "'" + (descr.find('O') != std::string::npos ? " (pickled Python objects)" : ""));
  const bool unicode = descr[1] == 'U', big = descr[0] == '>';
  const size_t chars = std::stoul(descr.substr(2)), width = unicode ? 4 * chars : chars;
  if (chars == 0) fail("its strings have no characters ('" + descr + "')");
  const bool fortran = h.compare(value_of("fortran_order"), 4, "True") == 0;
  size_t s = value_of("shape");
  if (s >= h.size() || h[s] != '(') fail("its shape is not a tuple");
  const size_t s_end = h.find(')', s);
  if (s_end == std::string::npos) fail("its shape is not closed");
  std::vector<size_t> shape;
  for (const std::string& part : split_columns([&] {
         std::string t = h.substr(s + 1, s_end - s - 1);
         std::replace(t.begin(), t.end(), ',', ' ');
         return t;
       }())) {
    if (!is_number(part)) fail("its shape holds \"" + part + "\"");
    shape.push_back(std::stoul(part));
  }
  if (shape.empty() || shape.size() > 2) fail("its array has " + std::to_string(shape.size()) + " dimensions");
  const size_t rows = shape[0], cols = shape.size() == 2 ? shape[1] : 1;
  // Compared in floating point: a forged shape must not wrap the product around.
  if (static_cast<double>(rows) * static_cast<double>(cols) * static_cast<double>(width) >
      static_cast<double>(b.size() - at - hlen))
    fail("its data end early (truncated)");
  const char* data = b.data() + at + hlen;
  auto element = [&](size_t r, size_t c) {
    const char* e = data + (fortran ? c * rows + r : r * cols + c) * width;
    std::string out;
    for (size_t i = 0; i < chars; ++i) {
      uint32_t ch;
      if (!unicode) {
        ch = static_cast<unsigned char>(e[i]);
      } else {
        const auto* u = reinterpret_cast<const unsigned char*>(e + 4 * i);
        ch = big ? (uint32_t{u[0]} << 24 | uint32_t{u[1]} << 16 | uint32_t{u[2]} << 8 | u[3])
                 : (uint32_t{u[3]} << 24 | uint32_t{u[2]} << 16 | uint32_t{u[1]} << 8 | u[0]);
      }
      if (ch == 0) break;
      if (unicode) append_utf8(out, ch);
      else out += static_cast<char>(ch);
    }
    return out;
  };
  std::vector<std::vector<std::string>> out(rows);
  for (size_t r = 0; r < rows; ++r) {
    if (shape.size() == 1) {
      out[r] = split_columns(element(r, 0));  // one line per element
    } else {
      for (size_t c = 0; c < cols; ++c) out[r].push_back(element(r, c));
    }
  }
  return out;
}

// Metadata files in numeric order of their stem (0.npy, 1.npy, ..., 10.npy), then any other .npy by name.
std::vector<std::string> metadata_files(const std::string& dir) {
  namespace fs = std::filesystem;
  std::vector<std::pair<std::pair<int, std::string>, std::string>> found;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().extension() != ".npy") continue;
    const std::string stem = it->path().stem().string();
    const bool num = is_number(stem);
    found.push_back({{num ? 0 : 1, num ? std::string(10 - stem.size(), '0') + stem : stem}, it->path().string()});
  }
  if (ec) throw Error("cannot list " + dir + ": " + ec.message());
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(f.second);
  return out;
}

}  // namespace pathfinder

PathfinderOptions pathfinder_options(int64_t size, const std::string& difficulty, uint64_t seed) {
  PathfinderOptions o;
  // Difficulty = contour length (lra.md sec. 1: easy curv_baseline 6, intermediate 9, hard 14).
  if (difficulty == "baseline") o.contour_length = 6;
  else if (difficulty == "intermediate") o.contour_length = 9;
  else if (difficulty == "hard") o.contour_length = 14;
  else throw Error("pathfinder: difficulty \"" + difficulty + "\" is not one of baseline, intermediate, hard");
  o.distractor_length = o.contour_length / 3;  // snakes2 under Python 2: integer division
  int64_t distractor_paddles = 20;
  if (size == 32) {  // LRA's Pathfinder32 docstring
    o.padding = 1, o.paddle_length = 2, o.paddle_thickness = 0.5, o.margins = {1}, o.marker_radius = 1.5;
    o.antialias_scale = 2, o.seed_distance = 7, o.continuity = 1.0, o.snake_contrast = 2, o.paddle_contrast = 0.75;
  } else if (size == 64) {  // Pathfinder64; paddle_length and paddle contrast: snakes2_wrapper's defaults
    o.padding = 1, o.paddle_length = 5, o.paddle_thickness = 1, o.margins = {1}, o.marker_radius = 2.5;
    o.antialias_scale = 2, o.seed_distance = 12, o.continuity = 1.8, o.snake_contrast = 0.8, o.paddle_contrast = 1;
    distractor_paddles = 22;
  } else if (size == 128) {  // Pathfinder128 (Path-X)
    o.padding = 1, o.paddle_length = 5, o.paddle_thickness = 1.5, o.margins = {2, 3}, o.marker_radius = 3;
    o.antialias_scale = 2, o.seed_distance = 20, o.continuity = 1.8, o.snake_contrast = 0.9, o.paddle_contrast = 1;
    distractor_paddles = 35;
  } else {
    throw Error("pathfinder: size " + std::to_string(size) + " is not one of 32, 64, 128 (LRA's parameter sets)");
  }
  // LRA's docstrings: num_distractor_snakes = K // distractor_length, about K distractor paddles at every length.
  o.num_distractor_snakes = distractor_paddles / o.distractor_length;
  o.size = size;
  o.seed = seed;
  return o;
}

PathfinderSample draw_pathfinder(const PathfinderOptions& o, int64_t index) {
  using namespace pathfinder;
  validate(o);
  Rng rng(draw_seed(o.seed, static_cast<uint64_t>(index)));
  PathfinderSample out;
  out.label = static_cast<int64_t>(rng.below(2));
  out.margin = o.margins[rng.below(o.margins.size())];
  const double target_value = o.snake_contrast * o.paddle_contrast;  // snakes2: distractors get snake contrast only
  // Long stiff contours rarely fit (64 px hard: 1 draw in 250 succeeds); only impossible parameters reach this.
  constexpr int64_t kMaxRedraws = 100000;
  for (;; ++out.redraws) {
    if (out.redraws >= kMaxRedraws)
      throw Error("pathfinder: image " + std::to_string(index) + " found no room for its two target contours in " +
                  std::to_string(kMaxRedraws) + " draws (size " + std::to_string(o.size) + ", contour_length " +
                  std::to_string(o.contour_length) + "): the contours are too long for the window");
    Drawer draw(o, rng, out.margin);
    std::vector<Contour> contours(2);
    for (int i = 0; i < 2; ++i) {
      Contour& c = contours[static_cast<size_t>(i)];
      c.id = i, c.paddles = static_cast<int>(o.contour_length), c.value = target_value;
    }
    if (!draw.targets(contours[0], contours[1])) continue;
    // snakes2: the origin marker on a random target A at its seed, the other at A's (label 1) or B's far tip.
    const int a = static_cast<int>(rng.below(2)), other = out.label ? a : 1 - a;
    out.markers = {contours[static_cast<size_t>(a)].vertices.front(),
                   contours[static_cast<size_t>(other)].vertices.back()};
    Shape discs[2];
    if (!draw.marker(out.markers[0], a, discs[0]) || !draw.marker(out.markers[1], other, discs[1])) continue;
    if (a == 1) std::swap(contours[0], contours[1]);  // contours[0] is A from here on
    for (int64_t s = 0; s < o.num_distractor_snakes; ++s) {
      Contour d;
      d.id = static_cast<int>(2 + s), d.paddles = static_cast<int>(o.distractor_length), d.value = o.snake_contrast;
      for (int64_t trial = 0; trial <= o.max_distractor_contour_retrial; ++trial) {
        Contour attempt = d;
        if (draw.distractor(attempt)) {
          contours.push_back(std::move(attempt));
          break;
        }
      }
    }
    out.pixels = render(o, draw.canvas(), contours, discs);
    for (const Contour& c : contours) out.contours.push_back(c.vertices);
    out.pixels.shrink_to_fit();
    return out;
  }
}

PathfinderImages generate_pathfinder_images(const PathfinderOptions& o, int64_t examples) {
  pathfinder::validate(o);
  PathfinderImages out;
  out.size = o.size;
  const int64_t P = o.size * o.size;
  out.pixels.resize(static_cast<size_t>(examples * P));
  out.labels.resize(static_cast<size_t>(examples));
  at::parallel_for(0, examples, 64, [&](int64_t begin, int64_t end) {  // each image its own stream: order-free
    for (int64_t i = begin; i < end; ++i) {
      const PathfinderSample s = draw_pathfinder(o, i);
      std::copy(s.pixels.begin(), s.pixels.end(), out.pixels.begin() + i * P);
      out.labels[static_cast<size_t>(i)] = s.label;
    }
  });
  return out;
}

ClassificationSplits pathfinder_splits(const PathfinderImages& images, uint64_t seed) {
  const int64_t N = images.count(), P = images.size * images.size, held = N / 10;
  if (held < 1) throw Error("pathfinder: " + std::to_string(N) + " images are too few to split 80/10/10 (need 10)");
  std::vector<int64_t> order(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) order[static_cast<size_t>(i)] = i;
  pathfinder::Rng rng(draw_seed(seed, 0x53504c4954ULL));  // "SPLIT": apart from the images' streams
  for (int64_t i = N - 1; i > 0; --i)
    std::swap(order[static_cast<size_t>(i)], order[rng.below(static_cast<uint64_t>(i + 1))]);
  ClassificationSplits s;
  std::vector<int16_t> tokens(static_cast<size_t>(P));
  for (int64_t r = 0; r < N; ++r) {  // LRA's [:80%] / [80%:90%] / [90%:]
    const int64_t i = order[static_cast<size_t>(r)];
    const uint8_t* px = images.pixels.data() + i * P;
    std::copy(px, px + P, tokens.begin());  // token = pixel (vocab 256)
    TokenExamples& split = r < N - 2 * held ? s.train : r < N - held ? s.valid : s.test;
    split.add(tokens.data(), P, images.labels[static_cast<size_t>(i)]);
  }
  return s;
}

void write_png_gray(const std::string& path, const uint8_t* pixels, int64_t width, int64_t height) {
  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(width);
  image.height = static_cast<png_uint_32>(height);
  image.format = PNG_FORMAT_GRAY;
  png_alloc_size_t n = 0;
  if (!png_image_write_get_memory_size(image, n, 0, pixels, 0, nullptr))
    throw Error("cannot encode " + path + " as PNG: " + image.message);
  std::vector<uint8_t> buffer(n);
  if (!png_image_write_to_memory(&image, buffer.data(), &n, 0, pixels, 0, nullptr))
    throw Error("cannot encode " + path + " as PNG: " + image.message);
  pathfinder::write_plain(path, buffer.data(), n);
}

std::vector<uint8_t> read_png_gray(const std::string& path, int64_t& width, int64_t& height) {
  const std::string bytes = read_file(path);
  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&image, bytes.data(), bytes.size()))
    throw Error(path + " is not a readable PNG: " + image.message);
  if (static_cast<uint64_t>(image.width) * image.height > (uint64_t{1} << 26)) {  // a forged header, not an image
    png_image_free(&image);
    throw Error(path + " claims " + std::to_string(image.width) + " x " + std::to_string(image.height) +
                " pixels, more than a Pathfinder image can have");
  }
  image.format = PNG_FORMAT_GRAY;  // 1 channel, 8 bits: gray as is, color converted by libpng, alpha over black
  std::vector<uint8_t> out(PNG_IMAGE_SIZE(image), 0);
  if (!png_image_finish_read(&image, nullptr, out.data(), 0, nullptr)) {
    const std::string why = image.message;
    png_image_free(&image);
    throw Error(path + " is not a readable PNG: " + why);
  }
  width = image.width, height = image.height;
  return out;
}

void write_pathfinder_dir(const std::string& dir, const PathfinderOptions& o, int64_t examples, int64_t per_folder) {
  namespace fs = std::filesystem;
  pathfinder::validate(o);
  if (fs::exists(dir + "/metadata")) throw Error(dir + " already holds a metadata folder");
  std::error_code ec;
  fs::create_directories(dir + "/metadata", ec);
  if (ec) throw Error("cannot create " + dir + "/metadata: " + ec.message());
  if (per_folder < 1) throw Error("pathfinder: images per folder must be positive");
  for (int64_t first = 0, k = 0; first < examples; first += per_folder, ++k) {
    const int64_t n = std::min(per_folder, examples - first);
    const std::string sub = "imgs/" + std::to_string(k);
    fs::create_directories(dir + "/" + sub, ec);
    if (ec) throw Error("cannot create " + dir + "/" + sub + ": " + ec.message());
    std::vector<int64_t> labels(static_cast<size_t>(n)), margins(static_cast<size_t>(n));
    at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const PathfinderSample s = draw_pathfinder(o, first + i);
        labels[static_cast<size_t>(i)] = s.label, margins[static_cast<size_t>(i)] = s.margin;
        write_png_gray(dir + "/" + sub + "/sample_" + std::to_string(i) + ".png", s.pixels.data(), o.size, o.size);
      }
    });
    std::string meta;  // snakes2's accumulate_meta columns, as LRA's release holds them (text lines)
    for (int64_t i = 0; i < n; ++i)
      meta += sub + " sample_" + std::to_string(i) + ".png " + std::to_string(i) + " " +
              std::to_string(labels[static_cast<size_t>(i)]) + " " + pathfinder::python_float(o.continuity) + " " +
              std::to_string(o.contour_length) + " " + std::to_string(o.distractor_length) + " " +
              std::to_string(o.paddle_length) + " " + pathfinder::python_float(o.paddle_thickness) + " " +
              std::to_string(margins[static_cast<size_t>(i)]) + " 1\n";
    write_file_atomic(dir + "/metadata/" + std::to_string(k) + ".npy", meta);  // after its images: never dangling
  }
}

std::vector<std::vector<std::string>> read_pathfinder_metadata(const std::string& path) {
  const std::string text = read_file(path);
  if (text.compare(0, 6, "\x93NUMPY") == 0) return pathfinder::parse_npy(path, text);
  std::vector<std::vector<std::string>> rows;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    rows.push_back(pathfinder::split_columns(text.substr(pos, end - pos)));  // an empty line stays an empty row
    pos = end + 1;
  }
  return rows;
}

PathfinderImages read_pathfinder_dir(const std::string& dir, int64_t max_examples) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw Error("pathfinder: " + dir + " is not a directory (expected a folder with metadata/ and imgs/, such as "
                "lra_release's pathfinder32/curv_contour_length_14)");
  if (!fs::is_directory(dir + "/metadata", ec))
    throw Error("pathfinder: " + dir + "/metadata does not exist (the layout is metadata/<k>.npy and "
                "imgs/<k>/sample_<i>.png)");
  const auto files = pathfinder::metadata_files(dir + "/metadata");
  if (files.empty()) throw Error("pathfinder: " + dir + "/metadata holds no .npy files");
  struct Entry {
    std::string path;
    int64_t label;
  };
  std::vector<Entry> entries;
  PathfinderImages out;
  for (const std::string& file : files) {
    if (static_cast<int64_t>(entries.size()) >= max_examples) break;
    const auto rows = read_pathfinder_metadata(file);
    for (size_t r = 0; r < rows.size() && static_cast<int64_t>(entries.size()) < max_examples; ++r) {
      const auto& row = rows[r];
      if (row.empty()) continue;
      const std::string where = file + ", row " + std::to_string(r + 1);
      if (row.size() < 4) throw Error(where + ": " + std::to_string(row.size()) + " columns, expected at least 4 "
                                      "(imgs/<k> sample_<i>.png index label ...)");
      if (row[3] != "0" && row[3] != "1")
        throw Error(where + ": the label (column 4) is \"" + row[3] + "\", not 0 or 1");
      const std::string path = dir + "/" + row[0] + "/" + row[1];
      struct stat st;
      if (::stat(path.c_str(), &st) != 0) throw Error(where + " names " + path + ", which does not exist");
      if (st.st_size == 0) {  // LRA filters zero-length images (one is known in pathfinder32/curv_baseline)
        ++out.skipped;
        continue;
      }
      entries.push_back({path, row[3] == "1" ? 1 : 0});
    }
  }
  if (entries.empty()) throw Error("pathfinder: the metadata in " + dir + "/metadata name no non-empty images");
  int64_t w = 0, h = 0;
  const auto first = read_png_gray(entries[0].path, w, h);
  if (w != h) throw Error(entries[0].path + " is " + std::to_string(w) + " x " + std::to_string(h) + ", not square");
  const int64_t N = static_cast<int64_t>(entries.size()), P = w * h;
  out.size = w;
  out.pixels.resize(static_cast<size_t>(N * P));
  out.labels.resize(static_cast<size_t>(N));
  at::parallel_for(0, N, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t iw = 0, ih = 0;
      const auto px = i == 0 ? first : read_png_gray(entries[static_cast<size_t>(i)].path, iw, ih);
      if (i > 0 && (iw != w || ih != h))
        throw Error(entries[static_cast<size_t>(i)].path + " is " + std::to_string(iw) + " x " + std::to_string(ih) +
                    ", unlike the " + std::to_string(w) + " x " + std::to_string(h) + " of " + entries[0].path);
      std::copy(px.begin(), px.end(), out.pixels.begin() + i * P);
      out.labels[static_cast<size_t>(i)] = entries[static_cast<size_t>(i)].label;
    }
  });
  return out;
}

ClassificationSplits read_pathfinder_corpus(const Json& d, bool quiet) {
  const std::string path = d["path"];
  const int64_t examples = d["pathfinder_examples"];
  const uint64_t seed = d["pathfinder_seed"];
  PathfinderImages images;
  if (path.empty()) {
    const PathfinderOptions o = pathfinder_options(d["pathfinder_size"], d["pathfinder_difficulty"], seed);
    if (!quiet)
      std::fprintf(stderr, "generating Pathfinder: %lld images of %lld x %lld, contour length %lld, seed %llu ...\n",
                   static_cast<long long>(examples), static_cast<long long>(o.size), static_cast<long long>(o.size),
                   static_cast<long long>(o.contour_length), static_cast<unsigned long long>(seed));
    images = generate_pathfinder_images(o, examples);
  } else {
    if (!quiet) std::fprintf(stderr, "reading Pathfinder from %s ...\n", path.c_str());
    images = read_pathfinder_dir(path, examples);
    if (!quiet && images.skipped > 0)
      std::fprintf(stderr, "skipped %lld zero-length images\n", static_cast<long long>(images.skipped));
  }
  return pathfinder_splits(images, seed);
}

}  // namespace longseq
