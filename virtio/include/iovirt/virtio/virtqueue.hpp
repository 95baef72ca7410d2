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
#pragma once

#include <cstdint>
#include <optional>

#include "iovirt/core/error.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/virtio/split_queue.hpp"

namespace iovirt::virtio {

enum class RingFormat : uint8_t { Split, Packed };

class Virtqueue final {
 public:
  [[nodiscard]] static Result<Virtqueue> create(uint16_t max_size);

  // --- configuration (transport, device stopped) ---
  [[nodiscard]] RingFormat format() const { return format_; }
  // Chooses the ring format; resets ring state. Packed is refused until the packed ring exists.
  Status set_format(RingFormat f);
  [[nodiscard]] uint32_t max_size() const { return split_.max_size(); }
  [[nodiscard]] uint32_t size() const { return split_.size(); }
  Status set_size(uint32_t size) { return split_.set_size(size); }
  void set_desc_area(uint64_t gpa) { split_.set_desc_table(gpa); }
  void set_driver_area(uint64_t gpa) { split_.set_avail_ring(gpa); }
  void set_device_area(uint64_t gpa) { split_.set_used_ring(gpa); }
  [[nodiscard]] uint64_t desc_area() const { return split_.desc_table(); }
  [[nodiscard]] uint64_t driver_area() const { return split_.avail_ring(); }
  [[nodiscard]] uint64_t device_area() const { return split_.used_ring(); }
  void set_event_idx(bool on) { split_.set_event_idx(on); }
  void set_indirect(bool on) { split_.set_indirect(on); }
  void set_ready(bool on) { split_.set_ready(on); }
  [[nodiscard]] bool ready() const { return split_.ready(); }
  [[nodiscard]] bool event_idx() const { return split_.event_idx(); }
  // Back to the state after create() (format kept).
  void reset() { split_.reset(); }

  // --- state ---
  [[nodiscard]] bool broken() const { return split_.broken(); }
  [[nodiscard]] QueueFault fault() const { return split_.fault(); }
  [[nodiscard]] uint16_t next_avail() const { return split_.next_avail(); }
  [[nodiscard]] uint16_t next_used() const { return split_.next_used(); }

  // --- data path (the owning backend thread) ---
  Status validate(const GuestMemory& mem) { return split_.validate(mem); }
  Result<std::optional<DescriptorChain>> pop(const GuestMemory& mem) { return split_.pop(mem); }
  // Gives a chain back with `written` bytes written into its device-writable buffers.
  Status push(const GuestMemory& mem, const DescriptorChain& chain, uint32_t written) {
    return split_.push(mem, chain.head, written);
  }
  Status push(const GuestMemory& mem, uint16_t head, uint16_t desc_count, uint32_t written) {
    (void)desc_count;
    return split_.push(mem, head, written);
  }
  Result<bool> needs_notification(const GuestMemory& mem) {
    return split_.needs_notification(mem);
  }
  Result<bool> enable_notification(const GuestMemory& mem) {
    return split_.enable_notification(mem);
  }
  Status disable_notification(const GuestMemory& mem) { return split_.disable_notification(mem); }

  [[nodiscard]] SplitQueue& split() { return split_; }

 private:
  explicit Virtqueue(SplitQueue split) : split_(std::move(split)) {}
  RingFormat format_ = RingFormat::Split;
  SplitQueue split_;
};

}  // namespace iovirt::virtio
