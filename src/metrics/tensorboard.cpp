// TensorBoard event files (see the header). Protocol buffers are written by hand: field keys (number << 3 | wire
// type), varints, little-endian fixed64 / fixed32, length-delimited strings and messages (tensorflow/core/util/
// event.proto: Event.wall_time = 1 double, step = 2 int64, file_version = 3 string, summary = 5, session_log = 6;
// summary.proto: Summary.value = 1, Value.tag = 1 string, simple_value = 2 float; SessionLog.status = 1, START = 1).
#include "longseq/tensorboard.h"

#include <array>
#include <chrono>
#include <cstring>

#include "longseq/common.h"
#include "longseq/runtime.h"

namespace longseq {

namespace {

std::array<uint32_t, 256> crc_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}

void varint(std::string& out, uint64_t v) {
  while (v >= 0x80) out.push_back(static_cast<char>((v & 0x7F) | 0x80)), v >>= 7;
  out.push_back(static_cast<char>(v));
}

void key(std::string& out, int field, int wire) { varint(out, static_cast<uint64_t>(field) << 3 | wire); }

template <typename T>
void fixed(std::string& out, T v) {  // little-endian, as the x86 and ARM hosts we build for are
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}

void bytes_field(std::string& out, int field, const std::string& data) {
  key(out, field, 2);
  varint(out, data.size());
  out += data;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// An Event with its wall time and step; `extra` holds the serialized oneof field.
std::string event(int64_t step, const std::string& extra) {
  std::string e;
  key(e, 1, 1), fixed<double>(e, now_seconds());
  key(e, 2, 0), varint(e, static_cast<uint64_t>(step));
  return e + extra;
}

}  // namespace

uint32_t crc32c(const void* data, size_t n) {
  static const auto table = crc_table();
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(const void* data, size_t n) {
  const uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

EventWriter::EventWriter(const std::string& dir, int64_t resumed_at) {
  const auto secs = static_cast<long long>(now_seconds());
  path_ = dir + "/events.out.tfevents." + std::to_string(secs) + ".longseq";
  for (int n = 1; path_exists(path_); ++n)  // a second writer within the same second
    path_ = dir + "/events.out.tfevents." + std::to_string(secs) + ".longseq." + std::to_string(n);
  out_.open(path_, std::ios::binary);
  if (!out_) throw Error("tensorboard: cannot create " + path_);
  std::string version;
  bytes_field(version, 3, "brain.Event:2");
  record(event(0, version));
  if (resumed_at > 0) {  // TensorBoard drops the events at or after this step that an earlier file holds
    std::string log, start;
    key(log, 1, 0), varint(log, 1);  // status START
    bytes_field(start, 6, log);
    record(event(resumed_at, start));
  }
  out_.flush();  // TensorBoard (and a test) may read the file while the run goes on
}

void EventWriter::scalar(const std::string& tag, double value, int64_t step) {
  std::string v, summary, field;
  bytes_field(v, 1, tag);
  key(v, 2, 5), fixed<float>(v, static_cast<float>(value));
  bytes_field(summary, 1, v);
  bytes_field(field, 5, summary);
  record(event(step, field));
}

void EventWriter::scalars(const Json& line, const std::string& prefix) {
  const int64_t step = line.value("step", int64_t{0});
  // "valid/" + "valid_bpb" reads better as "valid/bpb" (train keys stay whole: "train/train_s", not "train/s").
  const std::string stem = prefix == "valid/" ? "valid_" : "";
  for (const auto& kv : line.items()) {
    if (kv.key() == "step" || !kv.value().is_number()) continue;
    const std::string name = !stem.empty() && kv.key().rfind(stem, 0) == 0 ? kv.key().substr(stem.size()) : kv.key();
    scalar(prefix + name, kv.value().get<double>(), step);
  }
  out_.flush();
}

void EventWriter::record(const std::string& data) {
  const uint64_t n = data.size();
  std::string head;
  fixed<uint64_t>(head, n);
  fixed<uint32_t>(head, masked_crc32c(head.data(), 8));
  out_.write(head.data(), static_cast<std::streamsize>(head.size()));
  out_.write(data.data(), static_cast<std::streamsize>(data.size()));
  std::string tail;
  fixed<uint32_t>(tail, masked_crc32c(data.data(), data.size()));
  out_.write(tail.data(), static_cast<std::streamsize>(tail.size()));
  if (!out_) throw Error("tensorboard: cannot write " + path_);
}

}  // namespace longseq
