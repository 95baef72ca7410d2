// What every structured fuzz target here shares: trapping a broken invariant, and reading the
// input as little-endian integers that read as 0 once the bytes run out (so any prefix of an
// input is itself a valid input).
#pragma once

#include <dirent.h>

#include <cstddef>
#include <cstdint>
#include <span>

namespace iovirt::fuzz {

// A broken invariant: trap so libFuzzer (and the corpus replay) report the input.
inline void check(bool ok) {
  if (!ok) __builtin_trap();
}

// Open file descriptors of this process: equal before and after an input, or the code under test
// leaked one.
inline size_t open_fds() {
  DIR* d = ::opendir("/proc/self/fd");
  check(d != nullptr);
  size_t n = 0;
  while (::readdir(d) != nullptr) ++n;
  ::closedir(d);
  return n;
}

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  [[nodiscard]] bool empty() const { return pos_ >= size_; }
  uint8_t u8() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint16_t u16() {
    const uint16_t lo = u8();
    return static_cast<uint16_t>(lo | (u8() << 8));
  }
  uint32_t u32() {
    const uint32_t lo = u16();
    return lo | (static_cast<uint32_t>(u16()) << 16);
  }
  uint64_t u64() {
    const uint64_t lo = u32();
    return lo | (static_cast<uint64_t>(u32()) << 32);
  }
  // The bytes not read yet.
  [[nodiscard]] std::span<const uint8_t> rest() const {
    return pos_ < size_ ? std::span<const uint8_t>(data_ + pos_, size_ - pos_)
                        : std::span<const uint8_t>();
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace iovirt::fuzz
