// Device side of a packed virtqueue (virtio 1.2 section 2.8, VIRTIO_F_RING_PACKED) as plain
// state: size, the three area addresses, next avail/used ring positions with their wrap
// counters, and negotiated features. Every operation takes the guest memory as an argument, like
// SplitQueue, so the same queue serves in-process devices, vhost-user backends and tests.
//
// Ring positions: next_avail() is the slot the device polls next, next_used() the slot its next
// used descriptor goes to; each has a wrap counter that starts at 1 and flips when the position
// passes the end of the ring (section 2.8.1). The device may complete buffers in any order: a
// used descriptor carries the buffer id and the device skips forward by the number of ring slots
// that buffer took (its desc_count, section 2.8.6), whichever buffer it is.
//
// Threat model: every ring byte is written by a hostile guest. Each rule the guest can break is a
// QueueFault; the first fault marks the queue broken (the device then sets DEVICE_NEEDS_RESET,
// section 2.1.2) and every later pop/push fails until reset(). Loops are bounded by the queue
// size or the indirect table size. The device also tracks which buffer ids it holds, so a guest
// cannot make it hold one id twice (device backends key per-request state by id) or hold more
// ring slots than the ring has. pop() does not allocate: segments land in a buffer and the
// in-flight table is sized once by create().
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/virtio/inflight.hpp"
#include "iovirt/virtio/packed_ring.hpp"
#include "iovirt/virtio/split_queue.hpp"  // QueueFault, Segment, DescriptorChain

namespace iovirt::virtio {

class PackedQueue final {
 public:
  // Indirect tables larger than this are refused (Linux uses at most a few hundred entries).
  static constexpr uint32_t kMaxIndirectEntries = 1024;

  // max_size: the device's maximum queue size, in [1, 32768]; size() starts there.
  // Allocates the segment buffer and the in-flight table once.
  [[nodiscard]] static Result<PackedQueue> create(uint16_t max_size);

  // --- configuration (control path; the transport writes these) ---
  [[nodiscard]] uint32_t max_size() const { return max_size_; }
  [[nodiscard]] uint32_t size() const { return size_; }
  // Any size in [1, max_size()]: packed rings need not be a power of 2 (section 2.8.10.1).
  Status set_size(uint32_t size);
  void set_desc_ring(uint64_t gpa) { desc_gpa_ = gpa; }
  // Driver area: the driver event suppression structure (read by the device).
  void set_driver_event_area(uint64_t gpa) { driver_gpa_ = gpa; }
  // Device area: the device event suppression structure (written by the device).
  void set_device_event_area(uint64_t gpa) { device_gpa_ = gpa; }
  void set_event_idx(bool on) { event_idx_ = on; }
  void set_indirect(bool on) { indirect_ = on; }
  // VIRTIO_F_IN_ORDER negotiated: the device returns buffers in the order it popped them, so a
  // published batch of buffers the device wrote nothing into (tx) becomes one used descriptor
  // carrying the last buffer's id (section 2.8.23).
  void set_in_order(bool on) { in_order_ = on; }
  void set_ready(bool on) { ready_ = on; }
  [[nodiscard]] uint64_t desc_ring() const { return desc_gpa_; }
  [[nodiscard]] uint64_t driver_event_area() const { return driver_gpa_; }
  [[nodiscard]] uint64_t device_event_area() const { return device_gpa_; }
  [[nodiscard]] bool event_idx() const { return event_idx_; }
  [[nodiscard]] bool indirect() const { return indirect_; }
  [[nodiscard]] bool ready() const { return ready_; }

  // Back to the state after create(): not ready, positions 0 with wrap counters 1, features off,
  // nothing in flight, not broken.
  void reset();

  // --- state ---
  [[nodiscard]] uint16_t next_avail() const { return next_avail_; }
  [[nodiscard]] bool avail_wrap() const { return avail_wrap_; }
  [[nodiscard]] uint16_t next_used() const { return next_used_; }
  [[nodiscard]] bool used_wrap() const { return used_wrap_; }
  // Position | wrap counter << 15: the form of vhost GET/SET_VRING_BASE for packed rings.
  [[nodiscard]] uint16_t avail_state() const {
    return static_cast<uint16_t>(next_avail_ | (avail_wrap_ ? PACKED_WRAP_BIT : 0));
  }
  [[nodiscard]] uint16_t used_state() const {
    return static_cast<uint16_t>(next_used_ | (used_wrap_ ? PACKED_WRAP_BIT : 0));
  }
  // Restore (migration, vhost-user SET_VRING_BASE). Refuses a position >= size() without
  // breaking the queue (a control-path error, not a guest fault). Meant for a queue holding no
  // buffers: buffers popped before are forgotten.
  Status set_avail_state(uint16_t v);
  Status set_used_state(uint16_t v);
  [[nodiscard]] bool broken() const { return fault_ != QueueFault::None; }
  [[nodiscard]] QueueFault fault() const { return fault_; }
  // Ring slots held by popped, not yet pushed buffers.
  [[nodiscard]] uint32_t in_flight_slots() const { return inflight_slots_; }

  // --- data path ---
  // Size in range and each area inside guest memory, aligned (section 2.8.10.1).
  Status validate(const GuestMemory& mem);
  // Next available buffer, or nullopt when the descriptor at next_avail is not available
  // (section 2.8.1). head = buffer id, desc_count = ring slots the buffer took.
  Result<std::optional<DescriptorChain>> pop(const GuestMemory& mem);
  // A burst of pop(): up to out.size() buffers that are one direct descriptor each (a frame in
  // one buffer, as DPDK's virtio-user and Linux's rx refill post them), with the same checks and
  // faults as pop(). A buffer of any other shape stops the burst (left for pop(), `blocked`), and
  // so do buffers recovered by attach_inflight(). `prefetch_from`/`prefetch_len` as in
  // SplitQueue::pop_direct(). Each buffer takes one slot (desc_count 1). A fault after the
  // first buffer breaks the queue and returns the buffers taken before it.
  Result<DirectPop> pop_direct(const GuestMemory& mem, std::span<DirectChain> out,
                               uint32_t prefetch_from = SplitQueue::kNoPrefetch,
                               uint32_t prefetch_len = 128);
  // Return a buffer: a used descriptor at next_used (id, len, then flags with release, section
  // 2.8.21), then next_used advances by desc_count. `id` and `desc_count` must be what pop()
  // returned for a buffer still held; anything else is a device bug and breaks the queue.
  Status push(const GuestMemory& mem, uint16_t id, uint16_t desc_count, uint32_t written);
  // The same checks and bookkeeping as push(), but the used descriptor is written by the next
  // publish_used() (or push(), needs_notification()) together with the others deferred since,
  // as DPDK's vhost flushes its shadow used ring: ids and lengths first, then every flags word
  // but the first one's, the first one's last. The driver reads used descriptors in order, so it
  // takes the whole batch at once instead of pulling each descriptor's line back while the
  // device still writes the next one into it. With inflight tracking attached: push().
  Status push_deferred(const GuestMemory& mem, uint16_t id, uint16_t desc_count,
                       uint32_t written) {
    // Inline for the common case (a burst pushes per buffer, twice per forwarded frame): a
    // healthy queue without inflight tracking, `id` held with exactly desc_count slots, room in
    // the batch. Everything else, errors included, takes the checked path.
    if (fault_ == QueueFault::None && ready_ && inf_hdr_ == nullptr && id < size_ &&
        desc_count != 0 && inflight_[id] == desc_count && resubmit_.empty() &&
        npending_ < pending_.size()) {
      pending_[npending_++] = PendingUsed{next_used_, id, written, used_flags(written)};
      pending_slots_ += desc_count;
      retire(id, desc_count);
      return {};
    }
    return push_deferred_slow(mem, id, desc_count, written);
  }
  Status publish_used(const GuestMemory& mem);
  // Whether to interrupt the driver now for the used descriptors written since the last
  // decision (section 2.8.10): the driver event suppression flags, and with EVENT_IDX its
  // off_wrap (RING_EVENT_FLAGS_DESC).
  Result<bool> needs_notification(const GuestMemory& mem);

  // Driver-to-device notification suppression through the device event suppression structure.
  // enable_notification() asks for kicks again (DESC at next_avail with EVENT_IDX, else ENABLE)
  // and returns whether a buffer arrived meanwhile, so the device re-polls instead of missing it.
  Result<bool> enable_notification(const GuestMemory& mem);
  Status disable_notification(const GuestMemory& mem);

  // Inflight tracking (inflight.hpp) in `area` (inflight_packed_queue_bytes(size()) bytes at
  // least), for a ready, validated queue holding no buffers. A fresh area (version 0) starts at
  // the queue's current positions. An area a predecessor left behind sets both positions and
  // queues its in-flight buffers, which pop() returns first, oldest first. The area is shared
  // with the front-end and read as hostile input: marks, lists and positions are checked, and
  // the descriptors it holds go through the same checks as the ring's own.
  Status attach_inflight(const GuestMemory& mem, std::span<uint8_t> area);
  [[nodiscard]] bool inflight_attached() const { return inf_hdr_ != nullptr; }
  [[nodiscard]] size_t resubmit_pending() const { return resubmit_.size(); }

 private:
  explicit PackedQueue(uint32_t max_size);

  std::unexpected<Error> fault(QueueFault f, const std::string& detail);
  Status check_usable() const;
  Result<uint16_t> load_desc_flags(const GuestMemory& mem, uint32_t slot);
  Status walk_indirect(const GuestMemory& mem, const PvirtqDesc& table);
  Status append(const GuestMemory& mem, const PvirtqDesc& d, bool write);
  Status write_device_event(const GuestMemory& mem, uint16_t off_wrap, uint16_t flags);
  Status check_push(uint16_t id, uint16_t desc_count);
  Status check_take(uint16_t id, uint32_t slots);
  Status push_deferred_slow(const GuestMemory& mem, uint16_t id, uint16_t desc_count,
                            uint32_t written);
  // Section 2.8.3: WRITE in a used descriptor says whether the device wrote anything.
  [[nodiscard]] uint16_t used_flags(uint32_t written) const {
    return static_cast<uint16_t>(packed_used_bits(used_wrap_) | (written != 0 ? VIRTQ_DESC_F_WRITE : 0));
  }
  // Section 2.8.6: next_used skips the rest of this buffer's slots, whichever buffer it was; the
  // buffer is no longer held.
  void retire(uint16_t id, uint16_t desc_count) {
    uint32_t next = next_used_ + uint32_t{desc_count};
    if (next >= size_) {
      next -= size_;
      used_wrap_ = !used_wrap_;
    }
    next_used_ = static_cast<uint16_t>(next);
    inflight_[id] = 0;
    inflight_slots_ -= desc_count;
    used_since_signal_ = std::min(used_since_signal_ + desc_count, size_);
  }
  void record_pop(uint16_t id, uint32_t slots);
  Result<std::optional<DescriptorChain>> pop_resubmit(const GuestMemory& mem);
  void detach_inflight();

  uint32_t max_size_;
  uint32_t size_;
  uint64_t desc_gpa_ = 0;
  uint64_t driver_gpa_ = 0;
  uint64_t device_gpa_ = 0;
  bool ready_ = false;
  bool event_idx_ = false;
  bool indirect_ = false;
  bool in_order_ = false;
  uint16_t next_avail_ = 0;
  bool avail_wrap_ = true;
  uint16_t next_used_ = 0;
  bool used_wrap_ = true;
  // Ring slots used since the last needs_notification() decision (EVENT_IDX old position).
  uint32_t used_since_signal_ = 0;
  QueueFault fault_ = QueueFault::None;

  // Per-id ring slots held by the device (0: not held). Sized by create().
  std::vector<uint16_t> inflight_;
  uint32_t inflight_slots_ = 0;

  // Per-pop scratch.
  ChainSegments segs_;

  // Used descriptors reserved by push_deferred() and not yet written (at most one per held
  // buffer, so sized once by create()).
  struct PendingUsed {
    uint16_t slot;
    uint16_t id;
    uint32_t len;
    uint16_t flags;
  };
  std::vector<PendingUsed> pending_;
  uint32_t npending_ = 0;
  uint32_t pending_slots_ = 0;  // ring slots they take

  // Inflight tracking (attach_inflight). The area's entries hold copies of the in-flight
  // buffers' ring descriptors; which entries are free, how each buffer's entries link and which
  // head entry each buffer id has are kept here too, so a front-end writing into the area cannot
  // steer this process's own bookkeeping.
  struct Recovered {
    uint16_t entry;  // head entry in the area
    uint16_t id;
    uint16_t num;
  };
  InflightPackedHeader* inf_hdr_ = nullptr;
  InflightDescPacked* inf_desc_ = nullptr;
  uint64_t inf_counter_ = 0;
  std::vector<uint16_t> inf_free_;    // free entries (a stack)
  std::vector<uint16_t> inf_next_;    // per entry: the buffer's next entry
  std::vector<uint16_t> inf_head_;    // per buffer id: its head entry
  std::vector<Recovered> resubmit_;   // a predecessor's buffers, oldest last
  std::vector<PvirtqDesc> pop_descs_; // the ring descriptors of the buffer being popped
};

}  // namespace iovirt::virtio
