// The seam between a virtio transport (virtio-pci today) and a virtio device (net, blk).
//
// The transport owns everything the driver programs through it: status, feature negotiation,
// the Virtqueues, one kick eventfd per queue (a KVM ioeventfd on the queue's notify address) and
// the interrupt vectors. The device owns what the driver's buffers mean and the threads that
// serve them. The contract, in order:
//   1. features()/num_queues()/config: read at any time by the transport (vCPU threads);
//   2. negotiate(features) when the driver sets FEATURES_OK: the device may refuse a combination;
//   3. activate(ctx) at DRIVER_OK: the device starts its backend threads (never a vCPU thread);
//      from then on each bound queue belongs to exactly one backend thread;
//   4. reset() on device reset (status 0), on a driver re-negotiation and at VM teardown: when it
//      returns no device thread touches a queue, a kick fd or guest memory any more.
// A backend that finds a broken ring (a QueueFault) calls ctx.fail(reason): the transport sets
// DEVICE_NEEDS_RESET and raises a configuration interrupt (section 2.1.2); the VMM keeps running.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/virtio/virtqueue.hpp"

namespace iovirt::virtio {

// Device status bits (section 2.1).
namespace status {
inline constexpr uint8_t kAcknowledge = 1;
inline constexpr uint8_t kDriver = 2;
inline constexpr uint8_t kDriverOk = 4;
inline constexpr uint8_t kFeaturesOk = 8;
inline constexpr uint8_t kDeviceNeedsReset = 64;
inline constexpr uint8_t kFailed = 128;
}  // namespace status

// Device IDs (section 5).
inline constexpr uint16_t kDeviceIdNet = 1;
inline constexpr uint16_t kDeviceIdBlock = 2;

// Where a device interrupts the driver. Implemented by the transport; callable from any thread.
class VirtioInterrupt {
 public:
  virtual ~VirtioInterrupt() = default;
  // Used buffers on queue `q`; the caller already decided a notification is due
  // (Virtqueue::needs_notification).
  virtual void notify_queue(uint16_t q) = 0;
  // The device configuration changed (section 4.1.4.5: config vector + ISR bit 1).
  virtual void notify_config() = 0;
  // An eventfd that interrupts the driver for queue `q` when written, without passing through
  // iovirt (the MSI-X vector's KVM irqfd): the call fd handed to kernel vhost or a vhost-user
  // backend. -1 when there is none (no vector assigned); then use notify_queue().
  virtual int queue_irqfd(uint16_t q) = 0;
};

// A queue the driver enabled, handed to the device at DRIVER_OK.
struct QueueBinding {
  uint16_t index;
  Virtqueue* queue;  // configured and ready; owned by the transport, valid until reset() returns
  int kick_fd;       // eventfd (non-blocking) signalled on each driver notification; drain it
};

struct ActivateContext {
  const GuestMemory* mem;
  uint64_t features;                  // the negotiated feature bits
  std::vector<QueueBinding> queues;   // enabled queues only, in index order
  VirtioInterrupt* irq;
  // Unrecoverable device error (bad ring, backend gone): logged by the transport, which sets
  // DEVICE_NEEDS_RESET. Callable from any thread, more than once.
  std::function<void(const std::string& reason)> fail;
};

class VirtioDevice {
 public:
  virtual ~VirtioDevice() = default;

  virtual std::string_view name() const = 0;  // "blk0", "net0": log prefix and metrics label
  virtual uint16_t device_id() const = 0;
  // Every feature bit the device can serve, device-specific and transport-level alike
  // (VIRTIO_F_VERSION_1, EVENT_IDX, INDIRECT_DESC, RING_PACKED...). The transport may offer
  // fewer (user feature masks) but never more.
  virtual uint64_t features() const = 0;
  virtual uint16_t num_queues() const = 0;
  virtual uint16_t queue_max_size() const = 0;

  // Device-specific configuration space (section 4.1.4.6). The transport bounds-checks
  // offset + size against config_size() before calling.
  virtual uint32_t config_size() const = 0;
  virtual void read_config(uint32_t offset, std::span<uint8_t> data) = 0;
  virtual void write_config(uint32_t /*offset*/, std::span<const uint8_t> /*data*/) {}

  // The driver set FEATURES_OK with `features` (a subset of what was offered). An error keeps
  // FEATURES_OK clear, which tells the driver the combination is refused (section 3.1.1).
  virtual Status negotiate(uint64_t /*features*/) { return {}; }
  // DRIVER_OK: start serving. An error fails the device (DEVICE_NEEDS_RESET).
  virtual Status activate(ActivateContext ctx) = 0;
  // Stop serving; idempotent; no device thread runs when it returns.
  virtual void reset() = 0;
};

// Per-queue counters in the Prometheus endpoint, labelled {device, queue}.
struct QueueMetrics {
  Counter* kicks;            // driver notifications taken from the kick fd
  Counter* interrupts;       // interrupts sent to the driver
  Counter* suppressed;       // used batches whose interrupt the driver suppressed
  Counter* chains;           // descriptor chains completed
  Counter* bytes;            // payload bytes moved (read + written)

  static QueueMetrics create(MetricsRegistry& m, std::string_view device, uint16_t queue) {
    Labels l{{"device", std::string(device)}, {"queue", std::to_string(queue)}};
    return QueueMetrics{
        &m.counter("iovirt_virtio_queue_kicks_total", "Driver notifications received", l),
        &m.counter("iovirt_virtio_queue_interrupts_total", "Interrupts sent to the driver", l),
        &m.counter("iovirt_virtio_queue_suppressed_interrupts_total",
                   "Used-buffer batches whose interrupt the driver suppressed", l),
        &m.counter("iovirt_virtio_queue_chains_total", "Descriptor chains completed", l),
        &m.counter("iovirt_virtio_queue_bytes_total", "Payload bytes moved", l)};
  }
};

}  // namespace iovirt::virtio
