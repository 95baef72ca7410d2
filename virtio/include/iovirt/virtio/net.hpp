// virtio-net (virtio 1.2 section 5.1) on a Linux tap device.
//
// Two backends serve the data path:
//   - tap (default): one iovirt thread per queue pair moves frames between the virtqueues and
//     one tap queue fd, zero-copy (writev/readv straight from/into guest memory);
//   - vhost=on: the kernel's vhost-net moves them; iovirt only programs it (vhost_net.hpp) and
//     no iovirt thread sits on the data path.
//   - a PacketPort (NetConfig::port, packet_port.hpp): one iovirt thread per queue pair copies
//     frames between the rings and the port (loopback, sink, source, DPDK ethdev); the data path
//     of `iovirt-vhost net`, with optional busy-polling (poll_us).
// Either way the control queue (section 5.1.6.5) is parsed here, never on a vCPU thread.
//
// Queue layout (section 5.1.2): rx0, tx0, rx1, tx1, ..., rx(N-1), tx(N-1), ctrl, where N is
// max_virtqueue_pairs when VIRTIO_NET_F_MQ is negotiated and 1 otherwise; so the control queue's
// index depends on the negotiated features.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/eventfd.hpp"
#include "iovirt/core/fd.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/virtio/device.hpp"
#include "iovirt/virtio/packet_port.hpp"
#include "iovirt/virtio/ring.hpp"
#include "iovirt/virtio/split_queue.hpp"

namespace iovirt::virtio {

// Feature bits (section 5.1.3).
namespace net_feature {
inline constexpr unsigned kCsum = 0;
inline constexpr unsigned kGuestCsum = 1;
inline constexpr unsigned kCtrlGuestOffloads = 2;
inline constexpr unsigned kMtu = 3;
inline constexpr unsigned kMac = 5;
inline constexpr unsigned kGuestTso4 = 7;
inline constexpr unsigned kGuestTso6 = 8;
inline constexpr unsigned kGuestEcn = 9;
inline constexpr unsigned kGuestUfo = 10;
inline constexpr unsigned kHostTso4 = 11;
inline constexpr unsigned kHostTso6 = 12;
inline constexpr unsigned kHostEcn = 13;
inline constexpr unsigned kHostUfo = 14;
inline constexpr unsigned kMrgRxbuf = 15;
inline constexpr unsigned kStatus = 16;
inline constexpr unsigned kCtrlVq = 17;
inline constexpr unsigned kCtrlRx = 18;
inline constexpr unsigned kMq = 22;
}  // namespace net_feature

// struct virtio_net_hdr (section 5.1.6) in its VERSION_1 layout, num_buffers included.
struct VirtioNetHdr {
  uint8_t flags;
  uint8_t gso_type;
  uint16_t hdr_len;
  uint16_t gso_size;
  uint16_t csum_start;
  uint16_t csum_offset;
  uint16_t num_buffers;
};
static_assert(sizeof(VirtioNetHdr) == 12);
inline constexpr uint32_t kNetHdrSize = sizeof(VirtioNetHdr);
inline constexpr uint32_t kNumBuffersOffset = 10;

inline constexpr uint8_t VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
inline constexpr uint8_t VIRTIO_NET_HDR_F_DATA_VALID = 2;
inline constexpr uint8_t VIRTIO_NET_HDR_GSO_NONE = 0;
inline constexpr uint8_t VIRTIO_NET_HDR_GSO_TCPV4 = 1;
inline constexpr uint8_t VIRTIO_NET_HDR_GSO_UDP = 3;
inline constexpr uint8_t VIRTIO_NET_HDR_GSO_TCPV6 = 4;
inline constexpr uint8_t VIRTIO_NET_HDR_GSO_ECN = 0x80;

// Config space (section 5.1.4): mac, status, max_virtqueue_pairs, mtu.
inline constexpr uint16_t VIRTIO_NET_S_LINK_UP = 1;
inline constexpr uint32_t kNetConfigSize = 12;

// Control queue (section 5.1.6.5).
inline constexpr uint8_t VIRTIO_NET_OK = 0;
inline constexpr uint8_t VIRTIO_NET_ERR = 1;
inline constexpr uint8_t VIRTIO_NET_CTRL_MQ = 4;
inline constexpr uint8_t VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET = 0;

// The largest frame a tap hands over: a 64 KiB GSO packet plus its Ethernet/VLAN header.
inline constexpr uint32_t kMaxFrame = 65535 + 14 + 4;

// ---- Pure parsing, shared by the backends and the fuzzer (net_header.cpp) ----

// Why a TX chain is dropped. The kernel validates the header too; these are the rules iovirt
// itself relies on (section 5.1.6.2.1 device requirements).
enum class TxDrop : uint8_t {
  None,
  ShortHeader,        // fewer than 12 readable bytes
  TooLong,            // frame above kMaxFrame
  CsumNotNegotiated,  // NEEDS_CSUM without VIRTIO_NET_F_CSUM
  CsumOutOfFrame,     // csum_start + csum_offset + 2 beyond the frame
  GsoNotNegotiated,   // a gso_type whose HOST_* feature was not negotiated
  GsoBadType,         // unknown gso_type
  GsoBadSize,         // gso_size 0 with a GSO type
  GsoBadHdrLen,       // GSO with hdr_len beyond the frame
  TooManySegments,    // more segments than writev takes (IOV_MAX)
};
[[nodiscard]] const char* to_string(TxDrop d);

// Reads the header out of the chain's readable segments (it may span several) and checks it.
// Segments must already be inside guest memory (SplitQueue::pop guarantees it); a failed read is
// reported as ShortHeader.
struct TxCheck {
  TxDrop drop = TxDrop::None;
  VirtioNetHdr hdr{};
  uint32_t frame_len = 0;  // readable bytes after the header
};
[[nodiscard]] TxCheck check_tx_chain(const GuestMemory& mem, std::span<const Segment> segs,
                                     uint64_t features);

// Copies `out.size()` bytes starting at byte `offset` of the chain's readable (write=false) or
// writable (write=true) segments; false if the chain is shorter or memory fails.
bool gather_chain(const GuestMemory& mem, std::span<const Segment> segs, bool writable,
                  uint64_t offset, std::span<uint8_t> out);
bool scatter_chain(const GuestMemory& mem, std::span<const Segment> segs, uint64_t offset,
                   std::span<const uint8_t> in);

// One control-queue request parsed and executed (section 5.1.6.5): the ack byte goes into the
// first writable byte. `written` is 1 when the ack was stored, 0 when the chain had no writable
// byte (a driver bug: the chain is returned unanswered).
struct CtrlResult {
  uint8_t ack = VIRTIO_NET_ERR;
  uint32_t written = 0;
  uint8_t cls = 0xff;
  uint8_t cmd = 0xff;
  std::optional<uint16_t> set_pairs;  // VQ_PAIRS_SET accepted with this value
};
[[nodiscard]] CtrlResult handle_ctrl_chain(const GuestMemory& mem, std::span<const Segment> segs,
                                           uint16_t max_pairs, bool mq_negotiated);

// Features and config helpers.
[[nodiscard]] Status check_net_feature_deps(uint64_t features);
[[nodiscard]] unsigned tun_offload_flags(uint64_t features);

// ---- The device ----

// A random unicast, locally administered MAC (when the user gives none).
Result<std::array<uint8_t, 6>> random_mac();

struct NetConfig {
  std::string tap;  // ignored when `port` is set
  // Frames go to ports made by this factory (one per queue pair) instead of a tap. No offloads
  // are offered then (ports take plain frames).
  PacketPortFactory port;
  std::string port_name;  // for logs: "ring-loopback", "dpdk ..."
  uint32_t poll_us = 0;   // port backend: busy-poll this long after the last work (0: never)
  // Port backend, while busy-polling: once the rounds since the last empty one have moved a burst
  // (32 frames) or more, leave the rings and the port alone this long (spinning on PAUSE) after
  // each round that found nothing, before looking again (0: look again at once). A poll reads the
  // descriptor lines the driver may be writing; fewer polls slow a fast driver less, at the cost
  // of up to this much latency for a frame that arrives in the gap. Runs of fewer frames get no
  // gap. At most kMaxPollGapNs.
  uint32_t poll_gap_ns = 0;
  static constexpr uint32_t kMaxPollGapNs = 1'000'000;
  std::optional<std::array<uint8_t, 6>> mac;
  uint16_t queue_pairs = 1;
  bool vhost = false;
  uint16_t queue_size = 256;
  // A vhost-user back-end (iovirt-vhost): the front-end serves the control queue and turns
  // VQ_PAIRS_SET into SET_VRING_ENABLE, so the pairs whose rings it bound are the pairs in use,
  // and it may keep CTRL_VQ to itself (QEMU acks MQ without it). The control queue is never
  // served here.
  bool frontend_owns_ctrl = false;
};

class TapBackend;
class PortBackend;
struct PairQueues;
struct ServedQueue;
namespace vhost {
class VhostNetBackend;
}

// Per-device counters beyond the per-queue ones.
struct NetMetrics {
  Counter* tx_dropped;     // TX chains not sent (bad header, tap refused the frame)
  Counter* rx_dropped;     // frames read from the tap that did not fit the guest's buffers
  Counter* rx_bad_chains;  // RX chains without a writable byte, returned unused
  Counter* ctrl_commands;  // control-queue requests
  Counter* ctrl_errors;    // control-queue requests answered VIRTIO_NET_ERR
  // Per queue pair, for a polling port worker: TSC cycles in rounds that moved at least one frame
  // and the number of those rounds (testpmd's --record-core-cycles counts the same way).
  struct Worker {
    Counter* busy_cycles;
    Counter* busy_rounds;
  };
  std::vector<Worker> workers;
  static NetMetrics create(MetricsRegistry& m, std::string_view device, uint16_t pairs = 0);
};

class VirtioNet final : public VirtioDevice {
 public:
  static Result<std::unique_ptr<VirtioNet>> create(const NetConfig& cfg, MetricsRegistry& metrics,
                                                   std::string name);
  ~VirtioNet() override;
  VirtioNet(const VirtioNet&) = delete;
  VirtioNet& operator=(const VirtioNet&) = delete;

  std::string_view name() const override { return name_; }
  uint16_t device_id() const override { return kDeviceIdNet; }
  uint64_t features() const override { return features_; }
  uint16_t num_queues() const override { return static_cast<uint16_t>(2 * cfg_.queue_pairs + 1); }
  uint16_t queue_max_size() const override { return cfg_.queue_size; }
  uint32_t config_size() const override { return kNetConfigSize; }
  void read_config(uint32_t offset, std::span<uint8_t> data) override;
  Status negotiate(uint64_t features) override;
  Status activate(ActivateContext ctx) override;
  void reset() override;

  [[nodiscard]] const std::array<uint8_t, 6>& mac() const { return mac_; }
  // Queue pairs the driver enabled through VQ_PAIRS_SET (1 until then).
  [[nodiscard]] uint16_t active_pairs() const { return active_pairs_.load(); }
  // The tap offload flags (TUN_F_*) last applied.
  [[nodiscard]] unsigned applied_offloads() const { return applied_offloads_; }
  [[nodiscard]] const NetMetrics& net_metrics() const { return net_metrics_; }

  // Control-queue state change, from the thread serving the control queue.
  void set_active_pairs(uint16_t n);

 private:
  VirtioNet(NetConfig cfg, MetricsRegistry& metrics, std::string name);
  void set_tap_queues(uint16_t attached);
  uint64_t deps_view(uint64_t features) const;
  Status activate_ports(ActivateContext ctx, std::vector<PairQueues> pairs,
                        std::optional<ServedQueue> ctrl, uint16_t receiving);

  NetConfig cfg_;
  std::string name_;
  std::array<uint8_t, 6> mac_{};
  uint64_t features_ = 0;
  uint64_t negotiated_ = 0;
  std::vector<Fd> taps_;            // one per queue pair
  std::vector<bool> tap_attached_;  // multi-queue taps: queue fd i attached (TUNSETQUEUE)
  unsigned tap_offloads_ = 0;       // TUN_F_* the tap accepts
  unsigned applied_offloads_ = 0;
  std::atomic<uint16_t> active_pairs_{1};
  uint16_t pairs_in_use_ = 1;  // N of section 5.1.2 for the current activation
  NetMetrics net_metrics_;
  std::vector<QueueMetrics> queue_metrics_;
  std::unique_ptr<TapBackend> tap_backend_;
  std::unique_ptr<PortBackend> port_backend_;
  std::unique_ptr<vhost::VhostNetBackend> vhost_backend_;
  std::unique_ptr<TapBackend> ctrl_backend_;  // vhost=on: the control queue's own thread
};

}  // namespace iovirt::virtio
