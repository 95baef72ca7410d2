#include "iovirt/core/bus.hpp"

#include <mutex>

#include "iovirt/core/hex.hpp"

namespace iovirt {

Status Bus::insert(uint64_t base, uint64_t len, BusDevice* dev) {
  if (len == 0 || dev == nullptr) return fail(name_ + " bus: empty range or null device at " + hex(base));
  if (base + len < base) return fail(name_ + " bus: range at " + hex(base) + " wraps around");
  std::unique_lock lock(mu_);
  auto next = ranges_.lower_bound(base);
  if (next != ranges_.end() && next->first < base + len)
    return fail(name_ + " bus: range " + hex(base) + "+" + hex(len) + " overlaps " + hex(next->first));
  if (next != ranges_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second.len > base)
      return fail(name_ + " bus: range " + hex(base) + "+" + hex(len) + " overlaps " + hex(prev->first));
  }
  ranges_.emplace(base, Range{len, dev});
  return {};
}

Status Bus::remove(uint64_t base) {
  std::unique_lock lock(mu_);
  if (ranges_.erase(base) == 0) return fail(name_ + " bus: no range at " + hex(base));
  return {};
}

Status Bus::move(uint64_t old_base, uint64_t new_base) {
  Range r;
  {
    std::unique_lock lock(mu_);
    auto it = ranges_.find(old_base);
    if (it == ranges_.end()) return fail(name_ + " bus: no range at " + hex(old_base));
    r = it->second;
    ranges_.erase(it);
  }
  if (auto s = insert(new_base, r.len, r.dev); !s) {
    std::unique_lock lock(mu_);
    ranges_.emplace(old_base, r);  // put it back where it was
    return s;
  }
  return {};
}

BusDevice* Bus::find(uint64_t addr, uint64_t size, uint64_t* offset) const {
  auto it = ranges_.upper_bound(addr);
  if (it == ranges_.begin()) return nullptr;
  --it;
  uint64_t off = addr - it->first;
  if (off >= it->second.len || size > it->second.len - off) return nullptr;
  *offset = off;
  return it->second.dev;
}

// The lock covers only the lookup: a device access may itself change this bus (a config write
// through port I/O that moves an I/O BAR), and devices outlive every vCPU, so calling one after
// its range was moved or removed is harmless.
bool Bus::read(uint64_t addr, std::span<uint8_t> data) const {
  uint64_t off = 0;
  BusDevice* d;
  {
    std::shared_lock lock(mu_);
    d = find(addr, data.size(), &off);
  }
  if (!d) return false;
  d->read(off, data);
  return true;
}

bool Bus::write(uint64_t addr, std::span<const uint8_t> data) const {
  uint64_t off = 0;
  BusDevice* d;
  {
    std::shared_lock lock(mu_);
    d = find(addr, data.size(), &off);
  }
  if (!d) return false;
  d->write(off, data);
  return true;
}

}  // namespace iovirt
