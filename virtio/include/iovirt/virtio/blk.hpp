// virtio-blk (virtio 1.2 section 5.2) over a host file or block device, served by io_uring.
//
// Each request queue gets one backend thread with its own io_uring (depth = the queue size the
// driver chose). The thread waits in io_uring itself: a POLL_ADD on the queue's kick eventfd, one
// on the device's stop eventfd, and the I/O completions. It pops every available chain, parses it
// (blk_request.hpp), queues READV/WRITEV with iovecs pointing straight into guest memory (zero
// copy; per-slot iovec arrays allocated at activate, nothing per request), FSYNC(DATASYNC) for
// FLUSH and FALLOCATE for DISCARD/WRITE_ZEROES, submits the whole batch with one
// io_uring_submit, reaps completions in batches and interrupts at most once per batch when the
// driver wants it (needs_notification).
//
// Busy-poll (BlkConfig::poll_us): see run() in blk.cpp; the window restarts whenever it finds work,
// so a busy queue never sleeps and an idle one polls for one window after its last request.
//
// Guest memory is not registered as io_uring fixed buffers. Measured on the development host
// (kernel 6.18, raw io_uring loop, 4 KiB random reads, QD 32): READ_FIXED beats READV by ~35% on
// page-cache hits (1.10 M vs 0.80 M IOPS) but not at all with O_DIRECT (both ~85-90 k IOPS, device
// bound). The cost: READ_FIXED/WRITE_FIXED take one contiguous buffer (IORING_OP_READV_FIXED
// is 6.15+ and missing from Debian 12's liburing 2.3), so a scatter-gather request becomes one SQE
// per segment; registration pins all of guest RAM, accounted per ring (per queue) against
// RLIMIT_MEMLOCK (8 MiB by default here), and pinned pages cannot be reclaimed or collapsed into
// huge pages. Worth revisiting for single-segment requests once READV_FIXED is available.
//
// Threat model: every chain is parsed by parse_request (bounds, direction, capacity); a chain
// without a status byte, a broken ring (QueueFault) or a head reused while in flight fails the
// device through ActivateContext::fail and that queue stops being served until reset().
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/eventfd.hpp"
#include "iovirt/core/fd.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/virtio/blk_request.hpp"
#include "iovirt/virtio/device.hpp"

namespace iovirt::virtio {

// How a queue's reads, writes and flushes reach the file (discard and write zeroes always go
// through io_uring).
enum class BlkIo : uint8_t {
  // Sync for a RAM-backed file (tmpfs, ramfs, hugetlbfs) opened without O_DIRECT, else Uring.
  Auto,
  // io_uring: submitted in batches, completed out of order, reaped by the queue's thread.
  Uring,
  // preadv/pwritev/fdatasync on the queue's thread, each request done before the next is
  // popped. For a RAM-backed file this is all the work there is: shmem has no IOCB_NOWAIT, so
  // io_uring would hand every request to an io-wq worker thread and back. On a disk-backed file
  // a request that misses the page cache stalls the whole queue for the device's latency.
  Sync,
};
[[nodiscard]] const char* to_string(BlkIo io);
// "auto", "io_uring"/"uring", "sync"; nullopt for anything else.
[[nodiscard]] std::optional<BlkIo> parse_blk_io(std::string_view s);

struct BlkConfig {
  std::string path;
  bool readonly = false;
  bool direct = false;  // O_DIRECT: bypass the host page cache
  uint16_t queues = 1;
  uint16_t queue_size = 256;
  std::string serial;  // GET_ID string (<= 20 bytes); empty: derived from the file
  // Busy-poll window in microseconds (0: purely event-driven). After serving a batch, a queue's
  // worker keeps checking the avail ring and its io_uring completions with driver notifications
  // suppressed, for up to poll_us after the last work it found; when a window passes with
  // nothing to do it re-enables notifications, re-checks the ring and sleeps on the kick eventfd
  // again. Trades one host core per busy queue for the kick and wake-up latency.
  uint32_t poll_us = 0;
  BlkIo io = BlkIo::Auto;
};

class VirtioBlk final : public VirtioDevice {
 public:
  // Maximum data segments per request (config seg_max); Linux builds requests within it.
  static constexpr uint32_t kSegMax = 126;
  static constexpr uint32_t kMaxDiscardSectors = 1u << 22;  // 2 GiB per segment
  static constexpr uint32_t kMaxDiscardSeg = 8;
  static constexpr uint16_t kMaxQueueSize = 1024;
  static constexpr uint16_t kMaxQueues = 64;
  static constexpr uint32_t kMaxPollUs = 1'000'000;

  static Result<std::unique_ptr<VirtioBlk>> create(const BlkConfig& cfg, MetricsRegistry& metrics,
                                                   std::string name);
  ~VirtioBlk() override;
  VirtioBlk(const VirtioBlk&) = delete;
  VirtioBlk& operator=(const VirtioBlk&) = delete;

  std::string_view name() const override { return name_; }
  uint16_t device_id() const override { return kDeviceIdBlock; }
  uint64_t features() const override { return features_; }
  uint16_t num_queues() const override { return num_queues_; }
  uint16_t queue_max_size() const override { return queue_size_; }
  uint32_t config_size() const override { return sizeof(config_); }
  void read_config(uint32_t offset, std::span<uint8_t> data) override;
  Status negotiate(uint64_t features) override;
  Status activate(ActivateContext ctx) override;
  void reset() override;

  [[nodiscard]] uint64_t capacity_sectors() const { return config_.capacity; }
  [[nodiscard]] const std::string& serial() const { return serial_; }
  [[nodiscard]] const blk::BlkConfigSpace& config() const { return config_; }
  // BlkConfig::io as resolved at create() (never Auto).
  [[nodiscard]] BlkIo io_mode() const { return io_; }

 private:
  struct Worker;  // one per active queue: thread, io_uring, request slots (blk.cpp)

  VirtioBlk() = default;

  std::string name_;
  Fd disk_;
  bool readonly_ = false;
  uint16_t num_queues_ = 1;
  uint16_t queue_size_ = 256;
  uint32_t poll_us_ = 0;
  BlkIo io_ = BlkIo::Uring;
  uint64_t features_ = 0;
  std::string serial_;
  blk::BlkConfigSpace config_{};
  std::optional<EventFd> stop_;  // signalled by reset(): every worker polls it
  std::vector<QueueMetrics> queue_metrics_;
  // Request latency per queue and op: iovirt_virtio_blk_request_seconds{device,queue,op}.
  std::vector<std::array<Histogram*, blk::kBlkOpCount>> latency_;
  std::vector<std::unique_ptr<Worker>> workers_;
};

}  // namespace iovirt::virtio
