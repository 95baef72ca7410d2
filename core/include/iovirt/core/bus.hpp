// Address-range dispatch for vCPU exits (one Bus for port I/O, one for MMIO).
// The bus maps ranges to devices it does not own: the VM owns its devices and joins its vCPU
// threads before they are destroyed. A device sees (offset within its range, data). No bus lock
// is held while a device runs, so a device access may insert, move or remove ranges.
#pragma once

#include <cstdint>
#include <map>
#include <shared_mutex>
#include <span>
#include <string>

#include "iovirt/core/error.hpp"

namespace iovirt {

class BusDevice {
 public:
  virtual ~BusDevice() = default;
  // Access of data.size() bytes (1, 2, 4 or 8) at `offset` from the range's base.
  virtual void read(uint64_t offset, std::span<uint8_t> data) = 0;
  virtual void write(uint64_t offset, std::span<const uint8_t> data) = 0;
};

class Bus final {
 public:
  explicit Bus(std::string name) : name_(std::move(name)) {}

  // Refuses empty ranges, ranges that wrap past 2^64 and ranges that overlap an existing one.
  Status insert(uint64_t base, uint64_t len, BusDevice* dev);
  // Removes the range starting exactly at `base`.
  Status remove(uint64_t base);
  // Moves the range at `old_base` to `new_base` (same device and length); used when a guest
  // reprograms a BAR.
  Status move(uint64_t old_base, uint64_t new_base);

  // Dispatch an access. Returns false when no single range covers [addr, addr + size): the
  // caller then reads all-ones / drops the write, as hardware does for an unclaimed cycle.
  bool read(uint64_t addr, std::span<uint8_t> data) const;
  bool write(uint64_t addr, std::span<const uint8_t> data) const;

  const std::string& name() const { return name_; }

 private:
  struct Range {
    uint64_t len;
    BusDevice* dev;
  };
  // Returns the device and offset covering [addr, addr+size), or nullptr.
  BusDevice* find(uint64_t addr, uint64_t size, uint64_t* offset) const;

  std::string name_;
  mutable std::shared_mutex mu_;
  std::map<uint64_t, Range> ranges_;  // keyed by base
};

}  // namespace iovirt
