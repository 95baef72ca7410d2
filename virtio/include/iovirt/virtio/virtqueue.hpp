// One virtqueue as a device sees it, whatever its ring format: the split ring (section 2.7) or
// the packed ring (section 2.8, VIRTIO_F_RING_PACKED). Devices and backends are written against
// this facade only; the transport picks the format from the negotiated features before the queue
// is used.
//
// Area names follow the virtio-pci registers (section 4.1.4.3): desc = queue_desc, driver =
// queue_driver (split: avail ring; packed: driver event suppression), device = queue_device
// (split: used ring; packed: device event suppression).
//
// Threading: a Virtqueue is plain state with no lock. The transport configures it on a vCPU
// thread while the device is not running (before DRIVER_OK or after reset); from activate() until
// reset exactly one backend thread owns it.
// Dispatch: both ring objects live in the Virtqueue and a format switch picks one per call (a
// well-predicted branch, no variant visit, no allocation when the format changes).
#pragma once

#include <cstdint>
#include <optional>
#include <span>

#include "iovirt/core/error.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/virtio/packed_queue.hpp"
#include "iovirt/virtio/split_queue.hpp"

namespace iovirt::virtio {

enum class RingFormat : uint8_t { Split, Packed };

class Virtqueue final {
 public:
  [[nodiscard]] static Result<Virtqueue> create(uint16_t max_size);

  // --- configuration (transport, device stopped) ---
  [[nodiscard]] RingFormat format() const { return format_; }
  // Chooses the ring format and resets the queue (as reset()): call it once the features are
  // negotiated, before the queue is configured.
  Status set_format(RingFormat f);
  [[nodiscard]] uint32_t max_size() const { return split_.max_size(); }
  [[nodiscard]] uint32_t size() const { return packed() ? packed_.size() : split_.size(); }
  // Split: a power of 2; packed: any value in [1, max_size()].
  Status set_size(uint32_t size) {
    return packed() ? packed_.set_size(size) : split_.set_size(size);
  }
  void set_desc_area(uint64_t gpa) {
    if (packed()) {
      packed_.set_desc_ring(gpa);
    } else {
      split_.set_desc_table(gpa);
    }
  }
  void set_driver_area(uint64_t gpa) {
    if (packed()) {
      packed_.set_driver_event_area(gpa);
    } else {
      split_.set_avail_ring(gpa);
    }
  }
  void set_device_area(uint64_t gpa) {
    if (packed()) {
      packed_.set_device_event_area(gpa);
    } else {
      split_.set_used_ring(gpa);
    }
  }
  [[nodiscard]] uint64_t desc_area() const {
    return packed() ? packed_.desc_ring() : split_.desc_table();
  }
  [[nodiscard]] uint64_t driver_area() const {
    return packed() ? packed_.driver_event_area() : split_.avail_ring();
  }
  [[nodiscard]] uint64_t device_area() const {
    return packed() ? packed_.device_event_area() : split_.used_ring();
  }
  void set_event_idx(bool on) {
    if (packed()) {
      packed_.set_event_idx(on);
    } else {
      split_.set_event_idx(on);
    }
  }
  // Packed ring only (PackedQueue::set_in_order); the split ring ignores it.
  void set_in_order(bool on) { packed_.set_in_order(on); }
  void set_indirect(bool on) {
    if (packed()) {
      packed_.set_indirect(on);
    } else {
      split_.set_indirect(on);
    }
  }
  void set_ready(bool on) {
    if (packed()) {
      packed_.set_ready(on);
    } else {
      split_.set_ready(on);
    }
  }
  [[nodiscard]] bool ready() const { return packed() ? packed_.ready() : split_.ready(); }
  [[nodiscard]] bool event_idx() const {
    return packed() ? packed_.event_idx() : split_.event_idx();
  }
  // Back to the state after create() (format kept).
  void reset() {
    if (packed()) {
      packed_.reset();
    } else {
      split_.reset();
    }
  }

  // --- state ---
  [[nodiscard]] bool broken() const { return packed() ? packed_.broken() : split_.broken(); }
  [[nodiscard]] QueueFault fault() const { return packed() ? packed_.fault() : split_.fault(); }
  // Split: the free-running 16-bit index. Packed: ring position | wrap counter << 15, the form
  // of vhost GET_VRING_BASE.
  [[nodiscard]] uint16_t next_avail() const {
    return packed() ? packed_.avail_state() : split_.next_avail();
  }
  [[nodiscard]] uint16_t next_used() const {
    return packed() ? packed_.used_state() : split_.next_used();
  }
  // Restore (migration, vhost-user SET_VRING_BASE), same encodings as above. Packed refuses a
  // position outside the queue.
  Status set_next_avail(uint16_t v) {
    if (packed()) return packed_.set_avail_state(v);
    split_.set_next_avail(v);
    return {};
  }
  Status set_next_used(uint16_t v) {
    if (packed()) return packed_.set_used_state(v);
    split_.set_next_used(v);
    return {};
  }

  // --- data path (the owning backend thread) ---
  Status validate(const GuestMemory& mem) {
    return packed() ? packed_.validate(mem) : split_.validate(mem);
  }
  Result<std::optional<DescriptorChain>> pop(const GuestMemory& mem) {
    return packed() ? packed_.pop(mem) : split_.pop(mem);
  }
  // SplitQueue::pop_direct() / PackedQueue::pop_direct(): one-descriptor chains in a burst.
  Result<DirectPop> pop_direct(const GuestMemory& mem, std::span<DirectChain> out,
                               uint32_t prefetch_from = SplitQueue::kNoPrefetch,
                               uint32_t prefetch_len = 128) {
    if (packed()) return packed_.pop_direct(mem, out, prefetch_from, prefetch_len);
    return split_.pop_direct(mem, out, prefetch_from, prefetch_len);
  }
  // Gives a chain back with `written` bytes written into its device-writable buffers.
  Status push(const GuestMemory& mem, const DescriptorChain& chain, uint32_t written) {
    return packed() ? packed_.push(mem, chain.head, chain.desc_count, written)
                    : split_.push(mem, chain.head, written);
  }
  // desc_count: the chain's desc_count (packed ring; ignored by the split ring).
  Status push(const GuestMemory& mem, uint16_t head, uint16_t desc_count, uint32_t written) {
    return packed() ? packed_.push(mem, head, desc_count, written)
                    : split_.push(mem, head, written);
  }
  // A burst of returns published once, by publish_used() or needs_notification() (split: one
  // used idx store; packed: the used descriptors written together, the first one's flags last).
  Status push_deferred(const GuestMemory& mem, uint16_t head, uint16_t desc_count,
                       uint32_t written) {
    return packed() ? packed_.push_deferred(mem, head, desc_count, written)
                    : split_.push_deferred(mem, head, written);
  }
  Status publish_used(const GuestMemory& mem) {
    return packed() ? packed_.publish_used(mem) : split_.publish_used(mem);
  }
  Result<bool> needs_notification(const GuestMemory& mem) {
    return packed() ? packed_.needs_notification(mem) : split_.needs_notification(mem);
  }
  Result<bool> enable_notification(const GuestMemory& mem) {
    return packed() ? packed_.enable_notification(mem) : split_.enable_notification(mem);
  }
  Status disable_notification(const GuestMemory& mem) {
    return packed() ? packed_.disable_notification(mem) : split_.disable_notification(mem);
  }

  // Inflight tracking (inflight.hpp) in the layout of the queue's format:
  // SplitQueue::attach_inflight() / PackedQueue::attach_inflight().
  Status attach_inflight(const GuestMemory& mem, std::span<uint8_t> area) {
    return packed() ? packed_.attach_inflight(mem, area) : split_.attach_inflight(mem, area);
  }
  [[nodiscard]] size_t resubmit_pending() const {
    return packed() ? packed_.resubmit_pending() : split_.resubmit_pending();
  }

  [[nodiscard]] SplitQueue& split() { return split_; }
  [[nodiscard]] PackedQueue& packed_queue() { return packed_; }

 private:
  Virtqueue(SplitQueue split, PackedQueue packed)
      : split_(std::move(split)), packed_(std::move(packed)) {}
  [[nodiscard]] bool packed() const { return format_ == RingFormat::Packed; }

  RingFormat format_ = RingFormat::Split;
  SplitQueue split_;
  PackedQueue packed_;
};

}  // namespace iovirt::virtio
