// The guest side of a packed virtqueue, for tests, fuzzers and benchmarks: writes descriptors
// into the ring of a GuestMemory and reads used descriptors back, like the Linux virtio driver
// (virtio 1.2 sections 2.8.21 and 2.8.22): driver ring wrap counter starting at 1, buffer ids
// from a free list, the id in the last descriptor of a list, the head's flags written last after
// a release fence. Raw setters let a test play a hostile guest.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/virtio/packed_ring.hpp"
#include "iovirt/virtio/testing/driver_queue.hpp"  // Buf

namespace iovirt::virtio::testing {

struct DriverPackedLayout {
  uint16_t size;        // 1..32768, any value
  uint64_t desc_gpa;    // descriptor ring, 16 * size bytes
  uint64_t driver_gpa;  // driver event suppression (written by the driver)
  uint64_t device_gpa;  // device event suppression (written by the device)
};

struct PackedUsed {
  uint16_t id;
  uint32_t len;
  uint16_t flags;
};

class DriverPackedQueue final {
 public:
  // Zeroes the ring and both event structures. `mem` must outlive the DriverPackedQueue.
  [[nodiscard]] static Result<DriverPackedQueue> create(const GuestMemory& mem,
                                                        DriverPackedLayout layout);

  [[nodiscard]] const DriverPackedLayout& layout() const { return layout_; }

  // Makes the list available at next_avail (section 2.8.21.1). Returns the buffer id.
  Result<uint16_t> add_chain(std::span<const Buf> bufs);
  // Same, as one INDIRECT descriptor whose table is written at table_gpa (section 2.8.19).
  Result<uint16_t> add_indirect_chain(std::span<const Buf> bufs, uint64_t table_gpa);
  // Next used descriptor at the driver's next_used, or nullopt (section 2.8.22). Frees its id
  // and skips the slots its list took.
  Result<std::optional<PackedUsed>> take_used();
  // Ring slots free for new descriptors.
  [[nodiscard]] uint32_t free_slots() const { return num_free_; }
  [[nodiscard]] uint32_t ids_in_flight() const;
  // The id the next add_chain()/add_indirect_chain() will use, or nullopt if none is free.
  [[nodiscard]] std::optional<uint16_t> next_id() const {
    if (free_ids_.empty()) return std::nullopt;
    return free_ids_.back();
  }

  // Driver event suppression: what the device reads to decide on interrupts.
  Status set_driver_event(uint16_t flags, uint16_t off_wrap = 0);
  // off_wrap naming the driver's current next_used slot: "interrupt me at the next used
  // buffer", as Linux virtqueue_enable_cb_prepare_packed does with EVENT_IDX.
  [[nodiscard]] uint16_t used_off_wrap() const {
    return static_cast<uint16_t>(next_used_ | (used_wrap_ ? PACKED_WRAP_BIT : 0));
  }
  // Device event suppression as the device wrote it.
  Result<PvirtqEventSuppress> device_event() const;
  // Whether the driver must kick the device after adding `added` slots ending at next_avail
  // (Linux virtqueue_kick_prepare_packed).
  Result<bool> needs_kick(uint16_t added) const;

  [[nodiscard]] uint16_t next_avail() const { return next_avail_; }
  [[nodiscard]] bool avail_wrap() const { return avail_wrap_; }
  [[nodiscard]] uint16_t next_used() const { return next_used_; }
  [[nodiscard]] bool used_wrap() const { return used_wrap_; }

  // --- raw access for hostile tests ---
  Status write_desc(uint16_t slot, const PvirtqDesc& d);
  Result<PvirtqDesc> read_desc(uint16_t slot) const;
  // Write an indirect table of raw descriptors at gpa.
  Status write_table(uint64_t gpa, std::span<const PvirtqDesc> table);
  // Writes raw descriptors from next_avail on, each with the AVAIL/USED bits of its lap OR-ed
  // into its flags (the head's flags last), and advances next_avail past them. No id
  // bookkeeping: take_used() cannot free them.
  Status publish_raw(std::span<const PvirtqDesc> descs);

 private:
  DriverPackedQueue(const GuestMemory& mem, DriverPackedLayout layout);
  Result<uint16_t> place(std::span<const PvirtqDesc> descs);

  const GuestMemory* mem_;
  DriverPackedLayout layout_;
  uint16_t next_avail_ = 0;
  bool avail_wrap_ = true;
  uint16_t next_used_ = 0;
  bool used_wrap_ = true;
  uint32_t num_free_;
  std::vector<uint16_t> free_ids_;   // stack
  std::vector<uint16_t> id_slots_;   // slots held per id (0: free)
  std::vector<PvirtqDesc> scratch_;  // descriptors of the list being added
};

}  // namespace iovirt::virtio::testing
