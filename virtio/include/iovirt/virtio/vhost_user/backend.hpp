// vhost-user back-end: a transport that serves an unchanged VirtioDevice (VirtioBlk, ...) to a
// front-end in another process (QEMU, Cloud Hypervisor, DPDK virtio-user, iovirt), exactly as
// VirtioPciDevice serves it to a guest. The front-end programs what the driver would program
// through virtio-pci -- features, ring sizes and addresses, kick and call eventfds -- with
// vhost-user messages (QEMU docs/interop/vhost-user.rst), and shares guest RAM by fd.
//
// Mapping onto the VirtioDevice contract (device.hpp):
//   GET_FEATURES  -> device.features() (minus BackendOptions::features_off) plus
//                    VHOST_USER_F_PROTOCOL_FEATURES (bit 30);
//   SET_FEATURES  -> device.negotiate();
//   SET_MEM_TABLE -> GuestMemory::adopt() of the front-end's fds; ring addresses arrive as
//                    front-end virtual addresses and are translated to guest-physical ones
//                    through the table (each ring must then lie inside ONE region: that is
//                    Virtqueue::validate());
//   rings         -> one Virtqueue per queue, bound with the front-end's kick eventfd; the
//                    VirtioInterrupt this class implements writes the front-end's call eventfd.
//
// Activation rule. A ring is *live* when it is started (SET_VRING_KICK received, not stopped by
// GET_VRING_BASE since) and enabled (SET_VRING_ENABLE 1; or always, when the front-end did not
// negotiate VHOST_USER_F_PROTOCOL_FEATURES -- vhost-user.rst "Starting and stopping rings").
// After every message the backend compares the live set with the rings the device is serving;
// when they differ (or the memory table or the features changed) the device is reset and
// activated again with all live rings. A ring's next available index survives this: it is read
// back from the Virtqueue after reset() and restored, and the used index is re-read from the
// used ring in guest memory. A live ring that lacks SET_VRING_NUM, SET_VRING_ADDR or a memory
// table is a protocol error. Front-ends (QEMU's vhost_dev_start) configure every ring before
// enabling any, so in practice the device is activated once per start.
// Requests in flight when the device is reset are completed by the device but not returned to
// the driver (virtio reset semantics). With INFLIGHT_SHMFD (split and packed rings) they stay
// marked in the front-end's inflight area and are resubmitted when the ring starts again — by
// this back-end or by the next one after a crash (inflight.hpp); without it a front-end that
// restarts rings under I/O loses them.
//
// GET_VRING_BASE stops the ring: the device is reset first, so the returned index is final.
//
// Threat model: every message is hostile. The protocol parser validates sizes, counts, indexes
// and fds; this class validates the state machine (e.g. SET_VRING_NUM on a started ring, a size
// above the device's maximum, a ring outside the shared memory, a kick fd that is not an
// eventfd). Any error ends that connection: one logged line, the device reset, the memory
// unmapped, every fd closed. Nothing a peer sends ends the process.
//
// Device failure (ctx.fail from a device thread, e.g. a broken ring): logged, every ring's ERR
// eventfd is signalled, and the connection is shut down, so the front-end sees the back-end go
// away and can reconnect (a vhost-user front-end has no other way to learn DEVICE_NEEDS_RESET).
//
// Packed rings: SET/GET_VRING_BASE carry the 16-bit "position | wrap counter << 15" form QEMU
// and DPDK use; a restored packed ring's used position equals its avail position (nothing in
// flight), as those front-ends assume. Without SET_VRING_BASE a packed ring starts at position
// 0 with wrap counter 1. With an inflight area that a ring has run on, the area sets both
// positions instead (inflight.hpp), which is how a packed ring survives a back-end crash.
//
// Not implemented yet: the back-end request channel (config change notifications),
// ADD/REM_MEM_REG, dirty logging (LOG_ALL), polling-mode kicks (NOFD kick).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/fd.hpp"
#include "iovirt/core/eventfd.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/virtio/device.hpp"
#include "iovirt/virtio/vhost_user/protocol.hpp"
#include "iovirt/virtio/virtqueue.hpp"

namespace iovirt::virtio::vhost_user {

struct BackendOptions {
  // Feature bits never offered to the front-end.
  uint64_t features_off = 0;
  // Memory table regions accepted (<= 8, the SET_MEM_TABLE wire limit).
  uint32_t max_mem_slots = kMaxMemTableRegions;
};

// Protocol features this back-end offers: MQ, REPLY_ACK, CONFIG, STATUS, INFLIGHT_SHMFD.
uint64_t backend_protocol_features();

class VhostUserBackend final : private VirtioInterrupt {
 public:
  // `dev` and `metrics` must outlive the backend.
  static Result<std::unique_ptr<VhostUserBackend>> create(VirtioDevice& dev,
                                                          MetricsRegistry& metrics,
                                                          BackendOptions opt = {});
  ~VhostUserBackend() override;
  VhostUserBackend(const VhostUserBackend&) = delete;
  VhostUserBackend& operator=(const VhostUserBackend&) = delete;

  // Serves one front-end until it disconnects, misbehaves or stop() is called. On return the
  // device is reset, guest memory unmapped and every fd of the connection closed, so the same
  // backend can serve the next connection. Returns ok for a clean end (EOF, stop()), the
  // reason (already logged) when the connection was closed for a protocol error.
  Status serve(Connection conn);
  // Makes a running serve() return (shuts the socket down) and every later serve() return at
  // once. Any thread; idempotent.
  void stop();

  [[nodiscard]] VirtioDevice& device() { return dev_; }
  // Features offered in GET_FEATURES, VHOST_USER_F_PROTOCOL_FEATURES included.
  [[nodiscard]] uint64_t offered_features() const { return offered_; }

 private:
  struct Ring {
    uint32_t num = 0;  // 0: SET_VRING_NUM not received
    std::optional<VringAddr> addr;
    // Where to resume, in Virtqueue::next_avail()/next_used() encoding (packed: position | wrap
    // << 15). base: SET_VRING_BASE, or saved when the device stopped; unset: a fresh ring.
    // used: packed only, saved when the device stopped or given in SET_VRING_BASE's high half;
    // unset: equal to base, which is how QEMU and DPDK restore a packed ring (no buffers in
    // flight). Split rings re-read used->idx.
    std::optional<uint16_t> base;
    std::optional<uint16_t> used;
    Fd kick;
    Fd err;
    bool started = false;
    bool enabled = false;
  };

  VhostUserBackend(VirtioDevice& dev, MetricsRegistry& metrics, BackendOptions opt,
                   std::vector<Virtqueue> queues);

  // One message; an optional reply to send. An error closes the connection.
  Result<std::optional<Message>> handle(Message& msg);
  Status apply();  // (re)activates the device so that it serves exactly the live rings
  void stop_device();  // device reset; the serving rings' next avail indexes saved
  // RESET_OWNER / RESET_DEVICE: a fresh device (rings, call/err fds, features, status); the
  // memory table and protocol features stay.
  void reset_device_state();
  void reset_state();  // back to "nothing negotiated" (connection end): also memory, protocol
  Result<uint64_t> translate(uint64_t uaddr, const char* what) const;
  [[nodiscard]] uint16_t fresh_base() const;  // next_avail() of a ring never started
  [[nodiscard]] bool packed_features() const;  // VIRTIO_F_RING_PACKED negotiated
  [[nodiscard]] bool live(const Ring& r) const {
    return r.started && (r.enabled || !protocol_acked_);
  }

  // VirtioInterrupt (device threads).
  void notify_queue(uint16_t q) override;
  void notify_config() override;
  int queue_irqfd(uint16_t q) override;
  void device_failed(const std::string& reason);  // ctx.fail

  VirtioDevice& dev_;
  BackendOptions opt_;
  uint64_t offered_ = 0;
  Limits limits_{};
  Counter* connections_ = nullptr;
  Counter* errors_ = nullptr;

  // Connection state (serve() thread only).
  uint64_t features_ = 0;  // acked virtio features, bit 30 excluded
  bool features_set_ = false;
  bool protocol_acked_ = false;  // VHOST_USER_F_PROTOCOL_FEATURES negotiated
  uint64_t protocol_features_ = 0;
  uint8_t status_ = 0;
  std::optional<GuestMemory> mem_;
  std::vector<MemRegion> table_;  // the front-end's regions, for uaddr -> gpa
  // INFLIGHT_SHMFD: the front-end's inflight area (inflight.hpp), one stride per queue; split
  // rings track their heads in it. Kept until the connection ends.
  struct InflightArea;
  std::unique_ptr<InflightArea> inflight_;
  Result<std::optional<Message>> get_inflight_fd(const InflightWire& w);
  Status set_inflight_fd(const InflightWire& w, Fd fd);
  std::vector<Ring> rings_;
  std::vector<Virtqueue> queues_;
  std::vector<uint16_t> serving_;  // rings the device was activated with (sorted)
  bool dirty_ = false;             // features or memory changed: re-activate even if same set

  // Call fds: written by device threads, replaced by the serve() thread.
  std::mutex call_mu_;
  std::vector<Fd> calls_;
  std::vector<int> err_fds_;  // copy of the ERR fds for device_failed (under call_mu_)

  // The connection socket, for stop() and device_failed() from other threads.
  std::mutex conn_mu_;
  int conn_fd_ = -1;
  bool stop_requested_ = false;  // under conn_mu_: after stop(), serve() returns at once
  std::atomic<bool> failed_{false};
  std::string fail_reason_;  // under conn_mu_
};

// Listens on an AF_UNIX socket path and serves one front-end at a time with a backend; the next
// connection is accepted when the previous one ends (others wait in the listen backlog).
class VhostUserServer final {
 public:
  // Refuses a path where a live server answers; removes a stale socket left by a dead one;
  // refuses a path that exists and is not a socket.
  static Result<std::unique_ptr<VhostUserServer>> listen(const std::string& path,
                                                         VhostUserBackend& backend);
  ~VhostUserServer();  // unlinks the socket path (if it is still ours)
  VhostUserServer(const VhostUserServer&) = delete;
  VhostUserServer& operator=(const VhostUserServer&) = delete;

  // Accept-serve loop until stop(). A connection that misbehaves is closed and the loop goes on.
  Status run();
  // Any thread (a signal-handling thread): run() returns soon after.
  void stop();

  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] uint64_t connections_served() const { return served_.load(); }

 private:
  VhostUserServer(std::string path, Fd listen_fd, EventFd stop, VhostUserBackend& backend,
                  uint64_t ino);

  std::string path_;
  Fd listen_;
  EventFd stop_;
  VhostUserBackend& backend_;
  uint64_t ino_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> served_{0};
};

}  // namespace iovirt::virtio::vhost_user
