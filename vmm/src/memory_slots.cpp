#include "iovirt/vmm/memory_slots.hpp"

#include "iovirt/core/hex.hpp"

namespace iovirt {

namespace {
bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) {
  return a < b + blen && b < a + alen;
}
}  // namespace

Result<uint32_t> DeviceMemorySlots::map(uint64_t gpa, uint64_t size, void* host,
                                        std::string_view what) {
  const std::string name(what);
  constexpr uint64_t kPage = GuestMemory::kPageSize;
  if (size == 0 || gpa % kPage != 0 || size % kPage != 0 ||
      reinterpret_cast<uintptr_t>(host) % kPage != 0)
    return fail(name + ": cannot map " + hex(size) + " bytes at " + hex(gpa) +
                    ": not page-aligned",
                EINVAL);
  if (gpa + size < gpa) return fail(name + ": mapping at " + hex(gpa) + " wraps", EINVAL);
  for (const auto& r : ram_.regions())
    if (overlaps(gpa, size, r.gpa, r.size))
      return fail(name + ": guest placed it at " + hex(gpa) + "-" + hex(gpa + size - 1) +
                      ", over guest RAM",
                  EEXIST);
  std::lock_guard lock(mu_);
  for (const auto& [slot, m] : live_)
    if (overlaps(gpa, size, m.gpa, m.size))
      return fail(name + ": guest placed it at " + hex(gpa) + " over " + m.what, EEXIST);
  uint32_t slot = first_slot_;
  while (live_.contains(slot)) ++slot;
  if (slot - first_slot_ >= max_slots_)
    return fail(name + ": out of KVM memory slots (" + std::to_string(max_slots_) + " in use)",
                ENOSPC);
  IOVIRT_CHECK_CTX(set_(slot, gpa, size, host), name + ": KVM memory slot " + std::to_string(slot));
  live_.emplace(slot, Mapping{gpa, size, name});
  return slot;
}

Status DeviceMemorySlots::unmap(uint32_t handle) {
  std::lock_guard lock(mu_);
  auto it = live_.find(handle);
  if (it == live_.end()) return fail("memory slot " + std::to_string(handle) + " is not mapped", ENOENT);
  IOVIRT_CHECK_CTX(set_(handle, it->second.gpa, 0, nullptr),
                   it->second.what + ": removing KVM memory slot " + std::to_string(handle));
  live_.erase(it);
  return {};
}

size_t DeviceMemorySlots::live() const {
  std::lock_guard lock(mu_);
  return live_.size();
}

}  // namespace iovirt
