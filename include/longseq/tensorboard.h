// TensorBoard event files beside metrics.jsonl: a small writer of the TFRecord framing (length, masked CRC32C of the
// length, data, masked CRC32C of the data) holding tensorflow.Event protocol buffers (wall_time, step, a Summary of
// scalar values, or the file version and a SessionLog START that tells TensorBoard to drop later steps on resume).
#pragma once
#include <cstdint>
#include <fstream>
#include <string>

#include "longseq/schema.h"

namespace longseq {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of `n` bytes, and TFRecord's mask of it
// ((crc >> 15 | crc << 17) + 0xa282ead8).
uint32_t crc32c(const void* data, size_t n);
uint32_t masked_crc32c(const void* data, size_t n);

class EventWriter {
 public:
  // Opens `dir`/events.out.tfevents.<unix seconds>.longseq (a new file each time: TensorBoard reads every file of the
  // directory in order) and writes the file_version event. `resumed_at` > 0 adds a SessionLog START at that step.
  explicit EventWriter(const std::string& dir, int64_t resumed_at = 0);
  // One scalar per numeric field of a metrics line (the "step" field is the step): tag prefix + key.
  void scalars(const Json& line, const std::string& prefix);
  void scalar(const std::string& tag, double value, int64_t step);
  const std::string& path() const { return path_; }

 private:
  void record(const std::string& event);
  std::string path_;
  std::ofstream out_;
};

}  // namespace longseq
