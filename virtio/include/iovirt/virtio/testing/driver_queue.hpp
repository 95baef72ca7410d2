// The guest side of a split virtqueue, for tests, fuzzers and benchmarks: writes descriptor
// tables and the avail ring into a GuestMemory and reads the used ring back, like a virtio
// driver would (virtio 1.2 section 2.7.13). Raw setters let a test play a hostile guest.
// Descriptors are handed out round-robin; take_used() returns them.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/virtio/ring.hpp"

namespace iovirt::virtio::testing {

// One buffer of a chain as the driver sees it.
struct Buf {
  uint64_t gpa;
  uint32_t len;
  bool write;  // device-writable
};

struct DriverQueueLayout {
  uint16_t size;  // power of 2
  uint64_t desc_gpa;
  uint64_t avail_gpa;
  uint64_t used_gpa;
};

class DriverQueue final {
 public:
  // Zeroes the three ring areas. `mem` must outlive the DriverQueue.
  [[nodiscard]] static Result<DriverQueue> create(const GuestMemory& mem, DriverQueueLayout layout);

  [[nodiscard]] const DriverQueueLayout& layout() const { return layout_; }

  // Writes the chain into free descriptors and publishes its head (ring entry, then idx with a
  // release fence). Returns the head descriptor index.
  Result<uint16_t> add_chain(std::span<const Buf> bufs);
  // Same, but as one INDIRECT descriptor whose table is written at table_gpa (section 2.7.5.3).
  Result<uint16_t> add_indirect_chain(std::span<const Buf> bufs, uint64_t table_gpa);
  // Next used element the device published, or nullopt.
  Result<std::optional<VirtqUsedElem>> take_used();
  // Batching, as a driver adding a burst does: while held, add_chain() fills ring entries but
  // leaves avail idx alone; release_avail() publishes them all with one idx store.
  void hold_avail() {
    held_ = true;
    shadow_idx_ = avail_idx_;
  }
  Status release_avail();

  // --- raw access for hostile tests ---
  Status write_desc(uint16_t index, const VirtqDesc& d);
  // Write an indirect table of raw descriptors at gpa.
  Status write_table(uint64_t gpa, std::span<const VirtqDesc> table);
  // Put `head` into the next avail slot and bump avail idx by one.
  Status publish_head(uint16_t head);
  Status set_avail_ring_entry(uint16_t slot, uint16_t head);
  Status set_avail_idx(uint16_t idx);
  Status set_avail_flags(uint16_t flags);
  Status set_used_event(uint16_t v);
  [[nodiscard]] uint16_t avail_idx() const { return avail_idx_; }
  Result<uint16_t> used_idx() const;
  Result<uint16_t> used_flags() const;
  Result<uint16_t> avail_event() const;

 private:
  DriverQueue(const GuestMemory& mem, DriverQueueLayout layout);
  Result<uint16_t> alloc_descs(std::span<const Buf> bufs);

  const GuestMemory* mem_;
  DriverQueueLayout layout_;
  uint16_t avail_idx_ = 0;
  uint16_t shadow_idx_ = 0;  // ring entries written while held (avail_idx_ until released)
  bool held_ = false;
  uint16_t last_used_ = 0;
  uint16_t next_free_ = 0;
  uint32_t num_free_;
  std::vector<uint16_t> chain_len_;  // descriptors held per head
};

}  // namespace iovirt::virtio::testing
