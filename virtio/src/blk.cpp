// virtio-blk device with an io_uring backend; see blk.hpp.
#include "iovirt/virtio/blk.hpp"

#include <fcntl.h>
#include <liburing.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <poll.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <thread>

#include "iovirt/core/log.hpp"

namespace iovirt::virtio {

using blk::BlkOp;
using blk::BlkRange;
using blk::BlkRequest;

namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kKickTag = std::numeric_limits<uint64_t>::max() - 1;
constexpr uint64_t kStopTag = std::numeric_limits<uint64_t>::max();

std::string errno_text(int err) {
  return std::string(std::strerror(err));
}

// FNV-1a: a stable default serial from the image path.
uint64_t fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const char c : s) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

std::string default_serial(const std::string& path) {
  char* real = ::realpath(path.c_str(), nullptr);
  const std::string p = real != nullptr ? std::string(real) : path;
  std::free(real);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s = "iovirt";
  uint64_t h = fnv1a(p);
  for (int i = 0; i < 14; ++i) {
    s += kHex[h & 0xf];
    h >>= 4;
  }
  return s;  // 20 bytes
}

// The smallest I/O size O_DIRECT accepts on this file: a read of 512 bytes, else 4096, into a
// page-aligned buffer. Some filesystems open with O_DIRECT but refuse the I/O, so this is also
// the check that direct I/O works at all.
Result<uint32_t> probe_direct_block_size(int fd, const std::string& path) {
  void* buf = std::aligned_alloc(4096, 4096);
  if (buf == nullptr) return fail("allocate the O_DIRECT probe buffer");
  uint32_t found = 0;
  int err = 0;
  for (const uint32_t bs : {512u, 4096u}) {
    if (::pread(fd, buf, bs, 0) >= 0) {
      found = bs;
      break;
    }
    err = errno;
  }
  std::free(buf);
  if (found == 0) {
    return fail("direct I/O read of " + path + " failed; the filesystem does not support " +
                    "O_DIRECT: move the image to ext4/xfs or drop the direct option",
                err);
  }
  return found;
}

}  // namespace

// --- the per-queue backend ---

struct VirtioBlk::Worker {
  struct Slot {
    bool busy = false;
    bool failed = false;  // an operation of this request failed or came back short
    uint8_t fail_status = blk::VIRTIO_BLK_S_IOERR;
    BlkOp op = BlkOp::Other;
    uint16_t head = 0;
    uint16_t desc_count = 1;
    uint32_t pending = 0;   // io_uring operations in flight for this request
    uint64_t expected = 0;  // bytes a READV/WRITEV must move
    uint32_t used_len = 0;  // bytes written into the driver's buffers, status included
    uint8_t* status = nullptr;
    Clock::time_point start;
  };

  VirtioBlk* dev = nullptr;
  uint16_t index = 0;
  Virtqueue* vq = nullptr;
  int kick_fd = -1;
  int stop_fd = -1;
  int disk_fd = -1;
  const GuestMemory* mem = nullptr;
  VirtioInterrupt* irq = nullptr;
  std::function<void(const std::string&)> fail_fn;
  QueueMetrics metrics{};
  std::array<Histogram*, blk::kBlkOpCount> latency{};
  blk::BlkLimits limits{};
  const std::string* serial = nullptr;
  Clock::duration poll_window{};  // zero: never busy-poll
  bool sync_io = false;           // BlkIo::Sync: reads, writes and flushes done inline

  io_uring ring{};
  bool ring_ok = false;
  std::vector<Slot> slots;
  std::vector<iovec> iov_pool;       // kSegMax per slot
  std::vector<BlkRange> range_pool;  // kMaxDiscardSeg per slot
  uint32_t inflight = 0;             // slots with pending > 0
  bool dead = false;                 // queue broken or device failed: serve nothing more
  bool stopping = false;
  bool pushed = false;  // used entries pushed since the last notification decision
  std::thread thread;

  Worker() = default;
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker() {
    if (ring_ok) io_uring_queue_exit(&ring);
  }

  Status init(uint32_t depth) {
    const int rc = io_uring_queue_init(depth, &ring, 0);
    if (rc < 0) {
      return fail("io_uring_queue_init depth " + std::to_string(depth) + " for " +
                      std::string(dev->name()) + " queue " + std::to_string(index) +
                      " (is io_uring disabled, kernel.io_uring_disabled?)",
                  -rc);
    }
    ring_ok = true;
    slots.assign(depth, Slot{});
    iov_pool.assign(size_t{depth} * kSegMax, iovec{});
    range_pool.assign(size_t{depth} * kMaxDiscardSeg, BlkRange{});
    return {};
  }

  void fault(const std::string& why) {
    if (dead) return;
    dead = true;
    std::string msg(dev->name());
    msg += " queue ";
    msg += std::to_string(index);
    msg += ": ";
    msg += why;
    fail_fn(msg);
  }

  io_uring_sqe* get_sqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    if (sqe == nullptr) {
      // SQ full: hand the queued entries to the kernel now (it copies them), then retry.
      io_uring_submit(&ring);
      sqe = io_uring_get_sqe(&ring);
    }
    return sqe;
  }

  bool arm_poll(int fd, uint64_t tag) {
    io_uring_sqe* sqe = get_sqe();
    if (sqe == nullptr) return false;
    io_uring_prep_poll_add(sqe, fd, POLLIN);
    io_uring_sqe_set_data64(sqe, tag);
    return true;
  }

  void complete(Slot& s, uint8_t status, uint32_t used_len) {
    const auto op_index = static_cast<size_t>(s.op);
    s.busy = false;
    if (stopping) return;  // reset: the driver forgets these buffers (section 2.1.2)
    *s.status = status;
    latency[op_index]->observe(std::chrono::duration<double>(Clock::now() - s.start).count());
    if (dead) return;
    // Published with the rest of the batch (needs_notification() in notify_if_needed()).
    if (auto st = vq->push_deferred(*mem, s.head, s.desc_count, used_len); !st) {
      fault(st.error().message());
      return;
    }
    metrics.chains->inc();
    pushed = true;
  }

  void finish_async(Slot& s) {
    if (s.failed) {
      complete(s, s.fail_status, 1);
      return;
    }
    if (s.op == BlkOp::Read || s.op == BlkOp::Write) metrics.bytes->inc(s.expected);
    complete(s, blk::VIRTIO_BLK_S_OK, s.used_len);
  }

  void start(const DescriptorChain& chain) {
    if (chain.head >= slots.size()) {
      fault("chain head " + std::to_string(chain.head) + " beyond the queue size");
      return;
    }
    const size_t idx = chain.head;
    Slot& s = slots[idx];
    if (s.busy) {
      fault("driver made head " + std::to_string(chain.head) + " available while in flight");
      return;
    }
    const blk::BlkRequestStorage storage{
        std::span<iovec>(iov_pool).subspan(idx * kSegMax, kSegMax),
        std::span<BlkRange>(range_pool).subspan(idx * kMaxDiscardSeg, kMaxDiscardSeg)};
    const BlkRequest r = blk::parse_request(*mem, chain.segments, limits, storage);
    if (r.status_ptr == nullptr) {
      fault(std::string("unusable request chain: ") + r.reason);
      return;
    }
    s = Slot{};
    s.busy = true;
    s.op = r.op;
    s.head = chain.head;
    s.desc_count = chain.desc_count;
    s.status = r.status_ptr;
    s.start = Clock::now();
    if (r.status != blk::VIRTIO_BLK_S_OK) {
      if (log_enabled(LogLevel::Debug)) {
        std::string msg(dev->name());
        msg += ": request refused: ";
        msg += r.reason;
        log_debug(msg);
      }
      complete(s, r.status, 1);
      return;
    }
    switch (r.op) {
      case BlkOp::Read:
      case BlkOp::Write: {
        s.expected = r.data_len;
        s.used_len = r.op == BlkOp::Read ? static_cast<uint32_t>(r.data_len + 1) : 1;
        if (r.data_len == 0) {
          complete(s, blk::VIRTIO_BLK_S_OK, s.used_len);
          return;
        }
        if (sync_io) {
          rw_inline(s, r.op, storage.iov.data(), r.iov_count, r.offset);
          return;
        }
        io_uring_sqe* sqe = get_sqe();
        if (sqe == nullptr) {
          complete(s, blk::VIRTIO_BLK_S_IOERR, 1);
          return;
        }
        const iovec* iov = storage.iov.data();
        if (r.op == BlkOp::Read) {
          io_uring_prep_readv(sqe, disk_fd, iov, r.iov_count, r.offset);
        } else {
          io_uring_prep_writev(sqe, disk_fd, iov, r.iov_count, r.offset);
        }
        io_uring_sqe_set_data64(sqe, idx);
        s.pending = 1;
        break;
      }
      case BlkOp::Flush: {
        s.used_len = 1;
        if (sync_io) {
          int rc;
          do {
            rc = ::fdatasync(disk_fd);
          } while (rc != 0 && errno == EINTR);
          complete(s, rc == 0 ? blk::VIRTIO_BLK_S_OK : blk::VIRTIO_BLK_S_IOERR, 1);
          return;
        }
        io_uring_sqe* sqe = get_sqe();
        if (sqe == nullptr) {
          complete(s, blk::VIRTIO_BLK_S_IOERR, 1);
          return;
        }
        io_uring_prep_fsync(sqe, disk_fd, IORING_FSYNC_DATASYNC);
        io_uring_sqe_set_data64(sqe, idx);
        s.pending = 1;
        break;
      }
      case BlkOp::GetId: {
        // Copy the serial (zero padded to the buffer) through the gathered pieces.
        size_t done = 0;
        for (uint32_t i = 0; i < r.iov_count; ++i) {
          auto* dst = static_cast<uint8_t*>(storage.iov[i].iov_base);
          for (size_t k = 0; k < storage.iov[i].iov_len; ++k, ++done) {
            dst[k] = done < serial->size() ? static_cast<uint8_t>((*serial)[done]) : 0;
          }
        }
        complete(s, blk::VIRTIO_BLK_S_OK, static_cast<uint32_t>(r.data_len + 1));
        return;
      }
      case BlkOp::Discard:
      case BlkOp::WriteZeroes: {
        s.used_len = 1;
        for (uint32_t i = 0; i < r.range_count; ++i) {
          const BlkRange& rg = storage.ranges[i];
          // Discard and unmapping write zeroes deallocate (reads return zeroes, 5.2.6.2);
          // otherwise the range is zeroed and stays allocated.
          const int mode = (r.op == BlkOp::Discard || rg.unmap)
                               ? (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
                               : (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE);
          io_uring_sqe* sqe = get_sqe();
          if (sqe == nullptr) {
            s.failed = true;
            break;
          }
          io_uring_prep_fallocate(sqe, disk_fd, mode, static_cast<off_t>(rg.offset),
                                  static_cast<off_t>(rg.len));
          io_uring_sqe_set_data64(sqe, idx);
          ++s.pending;
        }
        if (s.pending == 0) {
          finish_async(s);
          return;
        }
        break;
      }
      case BlkOp::Other:
        complete(s, blk::VIRTIO_BLK_S_UNSUPP, 1);
        return;
    }
    ++inflight;
  }

  // BlkIo::Sync: the whole transfer now (a signal or a short count goes on from where it
  // stopped; no progress at all is an I/O error, as a short io_uring transfer is), then the
  // request completes as finish_async() would have completed it.
  void rw_inline(Slot& s, BlkOp op, const iovec* iov, uint32_t count, uint64_t offset) {
    iovec rest[kSegMax];
    count = std::min<uint32_t>(count, kSegMax);
    std::copy_n(iov, count, rest);
    uint32_t first = 0;  // rest[first, count) is still to transfer
    uint64_t done = 0;
    while (done < s.expected && first < count) {
      const auto at = static_cast<off_t>(offset + done);
      const auto n_iov = static_cast<int>(count - first);
      const ssize_t n = op == BlkOp::Read ? ::preadv(disk_fd, rest + first, n_iov, at)
                                          : ::pwritev(disk_fd, rest + first, n_iov, at);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // an error, or the end of the file
      done += static_cast<uint64_t>(n);
      auto k = static_cast<size_t>(n);
      while (first < count && k >= rest[first].iov_len) k -= rest[first++].iov_len;
      if (first < count && k > 0) {
        rest[first].iov_base = static_cast<uint8_t*>(rest[first].iov_base) + k;
        rest[first].iov_len -= k;
      }
    }
    if (done != s.expected) {
      complete(s, blk::VIRTIO_BLK_S_IOERR, 1);
      return;
    }
    metrics.bytes->inc(s.expected);
    complete(s, blk::VIRTIO_BLK_S_OK, s.used_len);
  }

  void on_io_done(uint64_t idx, int res) {
    if (idx >= slots.size()) return;  // cannot happen: only slot indices are submitted
    Slot& s = slots[idx];
    if (s.pending == 0) return;
    if (res < 0) {
      s.failed = true;
      // A filesystem without hole punching cannot discard: report UNSUPP rather than IOERR.
      if (res == -EOPNOTSUPP && s.op == BlkOp::Discard) s.fail_status = blk::VIRTIO_BLK_S_UNSUPP;
    } else if ((s.op == BlkOp::Read || s.op == BlkOp::Write) &&
               static_cast<uint64_t>(res) != s.expected) {
      s.failed = true;  // short read or write: the request did not complete (IOERR)
    }
    if (--s.pending == 0) {
      --inflight;
      finish_async(s);
    }
  }

  // Handles every available completion; reports kicks and stop. Returns the I/O completions seen.
  unsigned reap(bool& kicked, bool& stop) {
    unsigned seen = 0;
    unsigned io = 0;
    unsigned head = 0;
    io_uring_cqe* cqe = nullptr;
    io_uring_for_each_cqe(&ring, head, cqe) {
      ++seen;
      const uint64_t tag = io_uring_cqe_get_data64(cqe);
      if (tag == kKickTag) {
        kicked = true;
      } else if (tag == kStopTag) {
        stop = true;
      } else {
        on_io_done(tag, cqe->res);
        ++io;
      }
    }
    io_uring_cq_advance(&ring, seen);
    return io;
  }

  void notify_if_needed() {
    if (!pushed || dead || stopping) return;
    pushed = false;
    auto due = vq->needs_notification(*mem);
    if (!due) {
      fault(due.error().message());
      return;
    }
    if (*due) {
      irq->notify_queue(index);
      metrics.interrupts->inc();
    } else {
      metrics.suppressed->inc();
    }
  }

  // Pops every available chain (section 2.7.13 device side), with driver notifications off while
  // draining and a re-check after turning them back on so no buffer is missed. At most one
  // queue's worth per call, so a driver that refills as fast as we complete cannot keep this
  // thread from seeing a stop. Returns true when more work may be waiting.
  bool drain() {
    uint32_t budget = static_cast<uint32_t>(slots.size());
    for (;;) {
      if (dead) return false;
      if (auto st = vq->disable_notification(*mem); !st) {
        fault(st.error().message());
        return false;
      }
      for (;;) {
        if (budget == 0) return true;
        auto c = vq->pop(*mem);
        if (!c) {
          fault(c.error().message());
          return false;
        }
        if (!c->has_value()) break;
        --budget;
        start(**c);
        if (dead) return false;
      }
      auto more = vq->enable_notification(*mem);
      if (!more) {
        fault(more.error().message());
        return false;
      }
      if (!*more) return false;
    }
  }

  // One kick completion: consume the eventfd count and arm the next POLL_ADD.
  void on_kick() {
    drain_kick();
    if (!dead && !arm_poll(kick_fd, kKickTag)) fault("io_uring submission queue unavailable");
  }

  // Busy-poll after a batch (BlkConfig::poll_us). Driver notifications stay suppressed (with
  // VIRTIO_F_EVENT_IDX avail_event is simply not advanced, section 2.7.10.2, so at most the first
  // buffer after the last re-enable still kicks); the loop pops new chains and reaps io_uring
  // completions without entering the kernel, and restarts its window whenever it finds either,
  // so a queue under load never sleeps. When a whole window passes idle it falls back to events
  // with the race-free sequence of drain(): re-enable notifications, re-check the avail index,
  // and serve whatever slipped in before sleeping. Returns true when the device is stopping.
  bool busy_poll(bool& more) {
    if (auto st = vq->disable_notification(*mem); !st) {
      fault(st.error().message());
      return false;
    }
    auto deadline = Clock::now() + poll_window;
    for (;;) {
      if (io_uring_sq_ready(&ring) > 0) {
        const int rc = io_uring_submit(&ring);
        if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
          fault("io_uring_submit: " + errno_text(-rc));
          return false;
        }
      }
      bool kicked = false;
      bool stop = false;
      bool progress = reap(kicked, stop) > 0;
      if (stop) return true;
      if (kicked) on_kick();
      // At most a queue's worth per round, so completions and a stop are still seen.
      for (size_t budget = slots.size(); budget > 0 && !dead; --budget) {
        auto c = vq->pop(*mem);
        if (!c) {
          fault(c.error().message());
          break;
        }
        if (!c->has_value()) break;
        start(**c);
        progress = true;
      }
      if (dead) return false;
      notify_if_needed();
      const auto now = Clock::now();
      if (progress) {
        deadline = now + poll_window;
      } else if (now >= deadline) {
        break;
      } else {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();  // spin-wait hint: yields the core's pipeline to its sibling
#endif
      }
    }
    more = drain();  // re-enables notifications and re-checks (the race-free way to sleep)
    notify_if_needed();
    return false;
  }

  void drain_kick() {
    uint64_t v = 0;
    while (::read(kick_fd, &v, sizeof v) < 0 && errno == EINTR) {
    }
    metrics.kicks->inc();
  }

  void run() {
    std::string tname(dev->name());
    tname += "-q";
    tname += std::to_string(index);
    tname.resize(std::min<size_t>(tname.size(), 15));
    pthread_setname_np(pthread_self(), tname.c_str());

    if (!arm_poll(stop_fd, kStopTag) || !arm_poll(kick_fd, kKickTag)) {
      fault("io_uring submission queue unavailable");
    }
    // Buffers made available before DRIVER_OK's first kick.
    bool more = drain();
    notify_if_needed();
    for (;;) {
      // One submit per batch; block only when nothing is left to pop.
      const int rc = io_uring_submit_and_wait(&ring, more ? 0 : 1);
      if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
        fault("io_uring_submit_and_wait: " + errno_text(-rc));
        break;
      }
      bool kicked = false;
      bool stop = false;
      reap(kicked, stop);
      if (stop) break;
      if (kicked) on_kick();
      if (kicked || more) more = drain();
      notify_if_needed();
      if (!more && !dead && poll_window > Clock::duration::zero() && busy_poll(more)) break;
    }
    // Stop: what completed before is published (without an interrupt); no more used entries
    // after; wait for the I/O still writing guest memory.
    if (!dead) (void)vq->publish_used(*mem);
    stopping = true;
    io_uring_submit(&ring);
    while (inflight > 0) {
      io_uring_cqe* cqe = nullptr;
      const int rc = io_uring_wait_cqe(&ring, &cqe);
      if (rc == -EINTR || rc == -EAGAIN) continue;
      if (rc < 0) {
        // Cannot happen with a live ring; leaving would let the kernel write freed state.
        log_error(std::string(dev->name()) + ": io_uring_wait_cqe at reset: " + errno_text(-rc) +
                  "; aborting");
        std::abort();
      }
      bool k = false;
      bool st = false;
      (void)reap(k, st);
    }
  }
};

const char* to_string(BlkIo io) {
  switch (io) {
    case BlkIo::Auto:
      return "auto";
    case BlkIo::Uring:
      return "io_uring";
    case BlkIo::Sync:
      return "sync";
  }
  return "?";
}

std::optional<BlkIo> parse_blk_io(std::string_view s) {
  if (s == "auto") return BlkIo::Auto;
  if (s == "io_uring" || s == "uring") return BlkIo::Uring;
  if (s == "sync") return BlkIo::Sync;
  return std::nullopt;
}

// --- the device ---

Result<std::unique_ptr<VirtioBlk>> VirtioBlk::create(const BlkConfig& cfg, MetricsRegistry& metrics,
                                                     std::string name) {
  const std::string where = name + ": ";
  if (cfg.queues == 0 || cfg.queues > kMaxQueues) {
    return fail(where + "queues must be between 1 and " + std::to_string(kMaxQueues));
  }
  if (cfg.queue_size < 2 || cfg.queue_size > kMaxQueueSize ||
      !std::has_single_bit(cfg.queue_size)) {
    return fail(where + "queue size must be a power of 2 between 2 and " +
                std::to_string(kMaxQueueSize));
  }
  if (cfg.poll_us > kMaxPollUs) {
    return fail(where + "poll_us " + std::to_string(cfg.poll_us) + " is above the limit of " +
                std::to_string(kMaxPollUs) + " (one second)");
  }
  if (cfg.serial.size() > blk::VIRTIO_BLK_ID_BYTES) {
    return fail(where + "serial '" + cfg.serial + "' is longer than 20 bytes");
  }
  int flags = (cfg.readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  if (cfg.direct) flags |= O_DIRECT;
  Fd fd(::open(cfg.path.c_str(), flags));
  if (!fd) {
    const int err = errno;
    if (cfg.direct && err == EINVAL) {
      return fail(where + "open " + cfg.path + " with O_DIRECT: the filesystem does not support " +
                      "direct I/O (tmpfs?); move the image to ext4/xfs or drop the direct option",
                  err);
    }
    return fail(where + "open " + cfg.path + (cfg.readonly ? " read-only" : " read-write"), err);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return fail_errno(where + "fstat " + cfg.path);

  uint64_t size = 0;
  uint32_t logical = 512;
  uint32_t physical = 4096;
  if (S_ISREG(st.st_mode)) {
    size = static_cast<uint64_t>(st.st_size);
    if (st.st_blksize > 0) physical = static_cast<uint32_t>(st.st_blksize);
    if (cfg.direct) {
      auto bs = probe_direct_block_size(fd.get(), cfg.path);
      if (!bs) return std::unexpected(std::move(bs.error()).context(name));
      logical = *bs;
    }
  } else if (S_ISBLK(st.st_mode)) {
    if (::ioctl(fd.get(), BLKGETSIZE64, &size) != 0) {
      return fail_errno(where + "BLKGETSIZE64 " + cfg.path);
    }
    int lbs = 512;
    unsigned int pbs = 4096;
    if (::ioctl(fd.get(), BLKSSZGET, &lbs) == 0 && lbs >= 512) logical = static_cast<uint32_t>(lbs);
    if (::ioctl(fd.get(), BLKPBSZGET, &pbs) == 0 && pbs >= 512) physical = pbs;
  } else {
    return fail(where + cfg.path + " is neither a regular file nor a block device");
  }
  if (size < blk::kSectorSize) {
    return fail(where + cfg.path + " is smaller than one 512-byte sector; give a larger image");
  }
  // The guest sees 512-byte sectors; blk_size is only set above 512 for direct I/O, where the
  // host refuses smaller or misaligned I/O.
  const uint32_t blk_size = cfg.direct ? logical : 512;
  physical = std::max(physical, blk_size);
  if (!std::has_single_bit(physical) || physical > (1u << 16)) physical = blk_size;

  // Auto: inline for a RAM-backed file (io_uring would punt every request to a worker thread).
  BlkIo io = cfg.io;
  if (io == BlkIo::Auto) {
    struct statfs sfs {};
    const bool ram = S_ISREG(st.st_mode) && ::fstatfs(fd.get(), &sfs) == 0 &&
                     (sfs.f_type == TMPFS_MAGIC || sfs.f_type == RAMFS_MAGIC ||
                      sfs.f_type == HUGETLBFS_MAGIC);
    io = ram && !cfg.direct ? BlkIo::Sync : BlkIo::Uring;
  }

  std::unique_ptr<VirtioBlk> d(new VirtioBlk());
  d->name_ = std::move(name);
  d->io_ = io;
  d->disk_ = std::move(fd);
  d->readonly_ = cfg.readonly;
  d->num_queues_ = cfg.queues;
  d->queue_size_ = cfg.queue_size;
  d->poll_us_ = cfg.poll_us;
  d->serial_ = cfg.serial.empty() ? default_serial(cfg.path) : cfg.serial;

  auto stop = EventFd::create();
  if (!stop) return std::unexpected(std::move(stop.error()).context(d->name_));
  d->stop_.emplace(std::move(*stop));

  uint64_t f = feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_F_EVENT_IDX) |
               feature_bit(VIRTIO_F_INDIRECT_DESC) | feature_bit(VIRTIO_F_RING_PACKED) |
               feature_bit(blk::VIRTIO_BLK_F_SEG_MAX) | feature_bit(blk::VIRTIO_BLK_F_BLK_SIZE) |
               feature_bit(blk::VIRTIO_BLK_F_FLUSH) | feature_bit(blk::VIRTIO_BLK_F_TOPOLOGY);
  if (cfg.queues > 1) f |= feature_bit(blk::VIRTIO_BLK_F_MQ);
  if (cfg.readonly) {
    f |= feature_bit(blk::VIRTIO_BLK_F_RO);
  } else {
    f |= feature_bit(blk::VIRTIO_BLK_F_DISCARD) | feature_bit(blk::VIRTIO_BLK_F_WRITE_ZEROES);
  }
  d->features_ = f;

  // Configuration space (section 5.2.4). SIZE_MAX is not offered: any segment length inside
  // guest memory is served as one iovec, so there is nothing to cap.
  blk::BlkConfigSpace& c = d->config_;
  c.capacity = size >> blk::kSectorShift;
  c.seg_max = kSegMax;
  c.blk_size = blk_size;
  c.physical_block_exp = static_cast<uint8_t>(std::countr_zero(physical / blk_size));
  c.alignment_offset = 0;
  c.min_io_size = static_cast<uint16_t>(physical / blk_size);
  c.opt_io_size = 0;
  c.num_queues = cfg.queues;
  c.max_discard_sectors = kMaxDiscardSectors;
  c.max_discard_seg = kMaxDiscardSeg;
  c.discard_sector_alignment = physical / 512;
  c.max_write_zeroes_sectors = kMaxDiscardSectors;
  c.max_write_zeroes_seg = kMaxDiscardSeg;
  c.write_zeroes_may_unmap = 1;

  static const std::vector<double> kBounds = {1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4,
                                              1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2,
                                              1e-1, 2.5e-1, 5e-1, 1.0};
  for (uint16_t q = 0; q < cfg.queues; ++q) {
    d->queue_metrics_.push_back(QueueMetrics::create(metrics, d->name_, q));
    std::array<Histogram*, blk::kBlkOpCount> h{};
    for (unsigned op = 0; op < blk::kBlkOpCount; ++op) {
      h[op] = &metrics.histogram("iovirt_virtio_blk_request_seconds",
                                 "virtio-blk request latency, pop to completion", kBounds,
                                 Labels{{"device", d->name_},
                                        {"queue", std::to_string(q)},
                                        {"op", blk::to_string(static_cast<BlkOp>(op))}});
    }
    d->latency_.push_back(h);
  }
  std::string poll_note;
  if (cfg.poll_us > 0) {
    poll_note = ", busy-poll ";
    poll_note += std::to_string(cfg.poll_us);
    poll_note += " us";
  }
  log_info(d->name_ + ": " + cfg.path + ", " + std::to_string(c.capacity) + " sectors" +
           (cfg.readonly ? ", read-only" : "") + (cfg.direct ? ", O_DIRECT" : "") + ", " +
           std::to_string(cfg.queues) + " queue(s) of " + std::to_string(cfg.queue_size) + poll_note +
           ", I/O " + to_string(io) + (cfg.io == BlkIo::Auto ? " (auto)" : ""));
  return d;
}

VirtioBlk::~VirtioBlk() {
  reset();
}

void VirtioBlk::read_config(uint32_t offset, std::span<uint8_t> data) {
  // The transport bounds-checks; clamp anyway so a transport bug cannot read past the struct.
  const auto* src = reinterpret_cast<const uint8_t*>(&config_);
  for (size_t i = 0; i < data.size(); ++i) {
    const uint64_t at = uint64_t{offset} + i;
    data[i] = at < sizeof(config_) ? src[at] : 0;
  }
}

Status VirtioBlk::negotiate(uint64_t features) {
  // Legacy (pre-1.0) layouts are not implemented (section 7.1 transitional devices).
  if ((features & feature_bit(VIRTIO_F_VERSION_1)) == 0) {
    return fail(name_ +
                ": the driver did not accept VIRTIO_F_VERSION_1; legacy virtio-blk is "
                "not supported");
  }
  return {};
}

Status VirtioBlk::activate(ActivateContext ctx) {
  reset();
  if (ctx.mem == nullptr || ctx.irq == nullptr || !ctx.fail) {
    return fail(name_ + ": activate without guest memory, interrupt or fail callback");
  }
  blk::BlkLimits limits;
  limits.capacity_sectors = config_.capacity;
  limits.readonly = readonly_;
  limits.discard = (ctx.features & feature_bit(blk::VIRTIO_BLK_F_DISCARD)) != 0;
  limits.write_zeroes = (ctx.features & feature_bit(blk::VIRTIO_BLK_F_WRITE_ZEROES)) != 0;
  limits.max_discard_sectors = config_.max_discard_sectors;
  limits.max_discard_seg = config_.max_discard_seg;
  limits.max_write_zeroes_sectors = config_.max_write_zeroes_sectors;
  limits.max_write_zeroes_seg = config_.max_write_zeroes_seg;

  std::vector<std::unique_ptr<Worker>> workers;
  for (const QueueBinding& b : ctx.queues) {
    if (b.index >= num_queues_ || b.queue == nullptr || b.kick_fd < 0) {
      return fail(name_ + ": activate with an invalid binding for queue " +
                  std::to_string(b.index));
    }
    auto w = std::make_unique<Worker>();
    w->dev = this;
    w->index = b.index;
    w->vq = b.queue;
    w->kick_fd = b.kick_fd;
    w->stop_fd = stop_->fd();
    w->disk_fd = disk_.get();
    w->mem = ctx.mem;
    w->irq = ctx.irq;
    w->fail_fn = ctx.fail;
    w->metrics = queue_metrics_[b.index];
    w->latency = latency_[b.index];
    w->limits = limits;
    w->serial = &serial_;
    w->poll_window = std::chrono::microseconds(poll_us_);
    w->sync_io = io_ == BlkIo::Sync;
    const uint32_t depth = std::max<uint32_t>(b.queue->size(), 1);
    if (auto st = w->init(depth); !st) return st;
    workers.push_back(std::move(w));
  }
  workers_ = std::move(workers);
  for (auto& w : workers_) {
    Worker* p = w.get();
    p->thread = std::thread([p] { p->run(); });
  }
  return {};
}

void VirtioBlk::reset() {
  if (workers_.empty()) return;
  (void)stop_->write(1);
  for (auto& w : workers_) {
    if (w->thread.joinable()) w->thread.join();
  }
  workers_.clear();  // io_uring_queue_exit: nothing is in flight any more
  (void)stop_->read();
}

}  // namespace iovirt::virtio
