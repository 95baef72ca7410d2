// The vhost-user front-end: a virtio device whose rings are served by another process (iovirt-vhost,
// DPDK's net_vhost / OVS-DPDK, qemu-storage-daemon, SPDK) over an AF_UNIX socket
// (QEMU docs/interop/vhost-user.rst). To the transport it is an ordinary VirtioDevice; at DRIVER_OK
// it hands the back-end the guest's memory (the memfds, by SCM_RIGHTS), each ring's addresses, the
// queue's kick eventfd — the KVM ioeventfd on the notify address — and the vector's KVM irqfd
// eventfd as the call fd, so the data path never passes through iovirt: the guest's doorbell write
// wakes the back-end in the kernel, and the back-end's eventfd write is an interrupt in the guest.
//
// Reconnect: a monitor thread watches the socket. When the back-end goes away the guest keeps
// running (its kicks pile up in the eventfd); the monitor reconnects with a capped exponential
// backoff and NO time limit, repeats the handshake, and when the device was running programs the
// rings again with each split ring's base = the used index in guest memory, so the new back-end
// takes again every chain the old one had not completed (nothing is lost; verified against
// qemu-storage-daemon killed with SIGKILL in tests/interop). That alone is exact only for a
// back-end that completes in order; for blk, whose back-ends complete out of order, iovirt asks
// for INFLIGHT_SHMFD: the back-end marks what it has in flight in an area iovirt keeps and hands
// to the next back-end, which resubmits exactly those (inflight.hpp).
//
// The packed ring (packed=on) is offered only by a back-end that offers RING_PACKED and
// INFLIGHT_SHMFD: a packed ring's restore point is nowhere in guest memory (used descriptors
// overwrite the ring's slots), so a new back-end takes both positions and the buffers to
// resubmit from the inflight area, which iovirt then uses for net too. iovirt-vhost keeps it
// for packed rings; a back-end that offers the feature but does not fill the area for a packed
// ring cannot resume one. Without an area a lost packed ring fails the device (NEEDS_RESET).
//
// The back-end is hostile: every reply is parsed by the protocol library's validator (sizes,
// counts), feature bits outside what was offered by the back-end are never set, and a config
// reply is bounds-checked; a bad reply drops the connection (and the monitor reconnects).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/eventfd.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/virtio/device.hpp"
#include "iovirt/virtio/net.hpp"
#include "iovirt/virtio/vhost_user/protocol.hpp"

namespace iovirt::virtio::vhost_user {

struct FrontendOptions {
  std::string socket;       // the back-end's listening socket
  std::string name;         // "blk0", "net0"
  uint16_t device_id = 0;   // kDeviceIdBlock / kDeviceIdNet
  uint16_t queues = 1;      // blk: request queues; net: queue pairs (1..64)
  uint16_t queue_size = 256;
  // net only: the MAC in the device's config space (the back-end has no say in it).
  std::array<uint8_t, 6> mac{};
  // packed=on: offer VIRTIO_F_RING_PACKED when the back-end can restore it (above).
  bool packed = false;
  // Reconnect backoff: first wait, doubling up to max.
  uint32_t backoff_first_ms = 100;
  uint32_t backoff_max_ms = 2000;
};

class Frontend final : public VirtioDevice {
 public:
  // Connects and runs the handshake (features, protocol features, queue count, blk config).
  // A back-end that is not there yet is an error here: start it first (a VM cannot boot with a
  // disk whose size is unknown); disconnects after this point are survived.
  static Result<std::unique_ptr<Frontend>> connect(FrontendOptions opt, MetricsRegistry& metrics);
  ~Frontend() override;

  std::string_view name() const override { return opt_.name; }
  uint16_t device_id() const override { return opt_.device_id; }
  uint64_t features() const override { return features_; }
  uint16_t num_queues() const override { return num_queues_; }
  uint16_t queue_max_size() const override { return opt_.queue_size; }
  uint32_t config_size() const override { return static_cast<uint32_t>(config_.size()); }
  void read_config(uint32_t offset, std::span<uint8_t> data) override;
  Status negotiate(uint64_t features) override;
  Status activate(ActivateContext ctx) override;
  void reset() override;

  // Inspection for tests and logs.
  bool connected() const { return connected_.load(); }
  uint64_t reconnects() const { return reconnects_.load(); }
  uint64_t backend_protocol_features() const { return protocol_; }

 private:
  Frontend(FrontendOptions opt, MetricsRegistry& metrics);
  // Request/reply on conn_ (mu_ held).
  Status send(Message msg);
  Result<Message> request(Request r, Body body = Empty{});
  Result<uint64_t> request_u64(Request r);
  Status ack_if_asked(Request r);
  Status handshake();
  Status program_rings(bool restore);
  void monitor_loop();
  void drop_connection(const std::string& why);
  // net with more than one pair: the control queue is served here.
  Status start_ctrl();
  void stop_ctrl();
  void set_pairs(uint16_t n);
  Status share_inflight();

  FrontendOptions opt_;
  MetricsRegistry& metrics_;
  std::mutex mu_;  // the connection and the device state below
  std::optional<Connection> conn_;
  uint64_t backend_features_ = 0;
  uint64_t protocol_ = 0;  // negotiated protocol features
  uint64_t features_ = 0;  // offered to the driver
  uint64_t acked_ = 0;     // negotiated with the driver
  uint16_t num_queues_ = 0;
  std::vector<uint8_t> config_;
  std::optional<ActivateContext> active_;
  uint16_t active_pairs_ = 1;             // net: pairs enabled by VQ_PAIRS_SET
  std::optional<uint16_t> ctrl_index_;    // net: the control queue, when the driver has one
  std::optional<EventFd> ctrl_stop_;
  std::optional<QueueMetrics> ctrl_metrics_;
  std::optional<NetMetrics> net_metrics_;
  std::thread ctrl_thread_;
  Fd inflight_fd_;  // INFLIGHT_SHMFD area, kept across reconnects, dropped at device reset
  InflightWire inflight_info_{};
  std::atomic<bool> connected_{false};
  std::atomic<uint64_t> reconnects_{0};
  Counter* reconnect_counter_ = nullptr;
  Gauge* connected_gauge_ = nullptr;
  std::optional<EventFd> stop_;
  std::thread monitor_;
};

}  // namespace iovirt::virtio::vhost_user
