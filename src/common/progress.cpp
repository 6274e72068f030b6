#include <unistd.h>

#include <cstdio>

#include "longseq/runtime.h"

namespace longseq {

std::string format_duration(double s) {
  if (s < 0 || s > 1e8) return "?";
  char buf[32];
  int t = static_cast<int>(s + 0.5);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%dh%02dm", t / 3600, (t / 60) % 60);
  else std::snprintf(buf, sizeof buf, "%dm%02ds", t / 60, t % 60);
  return buf;
}

Progress::Progress(std::string label, int64_t total)
    : label_(std::move(label)), total_(total), tty_(::isatty(2) != 0),
      start_(std::chrono::steady_clock::now()) {}

void Progress::update(int64_t done, const std::string& fields) {
  const double now = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (start_done_ < 0) start_done_ = done > 0 ? done - 1 : 0;
  // On a terminal redraw at most 10x/s; in a log print every 5 s and at the end.
  const double gap = tty_ ? 0.1 : 5.0;
  if (done < total_ && now - last_print_ < gap) return;
  last_print_ = now;
  const double rate = (done - start_done_) / std::max(now, 1e-9);
  const double left = rate > 0 ? (total_ - done) / rate : -1;
  const int width = 24;
  const int filled = total_ > 0 ? static_cast<int>(width * done / total_) : 0;
  std::string bar(filled, '#');
  bar += std::string(width - filled, '.');
  std::fprintf(stderr, "%s%s [%s] %lld/%lld %s | %s elapsed, %s left%s", tty_ ? "\r\033[K" : "",
               label_.c_str(), bar.c_str(), static_cast<long long>(done), static_cast<long long>(total_),
               fields.c_str(), format_duration(now).c_str(), format_duration(left).c_str(),
               tty_ ? "" : "\n");
  std::fflush(stderr);
}

void Progress::finish() {
  if (tty_) std::fprintf(stderr, "\n");
}

}  // namespace longseq
