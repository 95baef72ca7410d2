// iovirt-blk-bench: a vhost-user-blk client that drives a back-end's virtio-blk ring directly, the
// way libblkio does, so iovirt-vhost and qemu-storage-daemon can be measured with the same client
// and without a VM. It prints figures; it is not a test (deploy/bench/vhost-blk-bench.sh runs it).
//
// It connects with iovirt's own front-end (vhost_user::Frontend: handshake, memory table by memfd,
// ring addresses, kick/call eventfds), then plays the guest driver on one split ring (virtio 1.2
// section 2.7) itself: QD request slots are laid out once in guest memory — three fixed
// descriptors each (header, 4 KiB data, status byte) — so submitting is writing a header and an
// avail entry, and nothing is allocated per request. It keeps QD requests in flight for a warm-up
// and then T seconds: 4 KiB random reads or writes, 4 KiB aligned, over the device's capacity.
// Each completion is checked (used id is a head in flight, status byte VIRTIO_BLK_S_OK, used
// length) and its latency (CLOCK_MONOTONIC at submit and at reap) goes into a preallocated array.
//
// Completions are awaited on the call eventfd (the back-end's interrupt), or with --poll by
// spinning on the used index with interrupts suppressed (VIRTQ_AVAIL_F_NO_INTERRUPT). Either way
// the kick honours the back-end's VIRTQ_USED_F_NO_NOTIFY (section 2.7.10), so a polling back-end
// is not kicked. VIRTIO_F_EVENT_IDX is not negotiated: both back-ends see the same flag-based
// suppression.
#include <getopt.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "iovirt/core/eventfd.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/virtio/blk_request.hpp"
#include "iovirt/virtio/device.hpp"
#include "iovirt/virtio/ring.hpp"
#include "iovirt/virtio/vhost_user/frontend.hpp"
#include "iovirt/virtio/virtqueue.hpp"

namespace {

using namespace iovirt;          // NOLINT
using namespace iovirt::virtio;  // NOLINT

constexpr uint32_t kBlockSize = 4096;
constexpr uint32_t kMaxQd = 128;
constexpr uint16_t kQueueSize = 512;  // 3 descriptors per slot: 384 used at QD 128
constexpr uint64_t kDescGpa = 0x10000;
constexpr uint64_t kAvailGpa = 0x20000;
constexpr uint64_t kUsedGpa = 0x30000;
constexpr uint64_t kHeaderGpa = 0x40000;  // 16 bytes per slot
constexpr uint64_t kStatusGpa = 0x50000;  // 1 byte per slot
constexpr uint64_t kDataGpa = 0x100000;   // 4 KiB per slot
constexpr uint64_t kMemSize = 4ull << 20;

struct Options {
  std::string socket;
  bool write = false;
  uint32_t qd = 1;
  double seconds = 10;
  double warmup = 1;
  bool poll = false;
};

[[noreturn]] void usage_exit(const char* why) {
  if (why != nullptr) std::fprintf(stderr, "iovirt-blk-bench: %s\n", why);
  std::fprintf(stderr,
               "usage: iovirt-blk-bench --socket PATH [--rw randread|randwrite] [--qd N]\n"
               "                        [--seconds T] [--warmup W] [--poll]\n"
               "  --socket PATH  a vhost-user-blk back-end (iovirt-vhost blk, qemu-storage-daemon)\n"
               "  --rw           4 KiB random reads (default) or writes over the whole device\n"
               "  --qd N         requests kept in flight, 1..128 (default 1)\n"
               "  --seconds T    measured time (default 10); --warmup W before it (default 1)\n"
               "  --poll         spin on the used index instead of waiting on the call eventfd\n"
               "Prints one line: rw qd iops p50_us p99_us (and a human-readable summary).\n");
  std::exit(2);
}

double parse_double(const char* opt, const char* v) {
  char* end = nullptr;
  const double d = std::strtod(v, &end);
  if (end == v || *end != '\0' || !(d > 0)) {
    std::string msg = opt;
    msg += ": '";
    msg += v;
    msg += "' is not a positive number";
    usage_exit(msg.c_str());
  }
  return d;
}

Options parse(int argc, char** argv) {
  Options o;
  static const option kLong[] = {{"socket", required_argument, nullptr, 's'},
                                 {"rw", required_argument, nullptr, 'r'},
                                 {"qd", required_argument, nullptr, 'q'},
                                 {"seconds", required_argument, nullptr, 't'},
                                 {"warmup", required_argument, nullptr, 'w'},
                                 {"poll", no_argument, nullptr, 'p'},
                                 {"help", no_argument, nullptr, 'h'},
                                 {nullptr, 0, nullptr, 0}};
  int c = 0;
  while ((c = ::getopt_long(argc, argv, "", kLong, nullptr)) != -1) {
    switch (c) {
      case 's':
        o.socket = optarg;
        break;
      case 'r':
        if (std::strcmp(optarg, "randread") == 0) {
          o.write = false;
        } else if (std::strcmp(optarg, "randwrite") == 0) {
          o.write = true;
        } else {
          usage_exit("--rw: expected randread or randwrite");
        }
        break;
      case 'q': {
        const double q = parse_double("--qd", optarg);
        if (q < 1 || q > kMaxQd || q != static_cast<double>(static_cast<uint32_t>(q)))
          usage_exit("--qd: expected an integer in 1..128");
        o.qd = static_cast<uint32_t>(q);
        break;
      }
      case 't':
        o.seconds = parse_double("--seconds", optarg);
        break;
      case 'w':
        o.warmup = parse_double("--warmup", optarg);
        break;
      case 'p':
        o.poll = true;
        break;
      case 'h':
        usage_exit(nullptr);
      default:
        usage_exit("unknown option");
    }
  }
  if (optind != argc) usage_exit("unexpected argument");
  if (o.socket.empty()) usage_exit("--socket PATH is required");
  return o;
}

uint64_t now_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// The call fd the back-end writes (KVM's irqfd in a VM).
class CallFd final : public VirtioInterrupt {
 public:
  explicit CallFd(EventFd fd) : fd_(std::move(fd)) {}
  void notify_queue(uint16_t) override {}
  void notify_config() override {}
  int queue_irqfd(uint16_t) override { return fd_.fd(); }
  [[nodiscard]] int fd() const { return fd_.fd(); }

 private:
  EventFd fd_;
};

// xorshift64*: cheap, good enough to spread offsets.
struct Rng {
  uint64_t s;
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 2685821657736338717ull;
  }
};

int run(const Options& o) {
  MetricsRegistry metrics;
  vhost_user::FrontendOptions fo;
  fo.socket = o.socket;
  fo.name = "bench0";
  fo.device_id = kDeviceIdBlock;
  fo.queue_size = kQueueSize;
  auto front = vhost_user::Frontend::connect(fo, metrics);
  if (!front) {
    std::fprintf(stderr, "iovirt-blk-bench: %s\n", front.error().what().c_str());
    return 1;
  }
  vhost_user::Frontend& dev = **front;
  blk::BlkConfigSpace cfg{};
  dev.read_config(0, std::span<uint8_t>(reinterpret_cast<uint8_t*>(&cfg), sizeof cfg));
  const uint64_t blocks = cfg.capacity / (kBlockSize / 512);
  if (blocks == 0) {
    std::fprintf(stderr, "iovirt-blk-bench: the device is smaller than 4 KiB\n");
    return 1;
  }
  if (o.write && has(dev.features(), blk::VIRTIO_BLK_F_RO)) {
    std::fprintf(stderr, "iovirt-blk-bench: randwrite on a read-only device\n");
    return 1;
  }
  const uint64_t features = dev.features() & ~feature_bit(VIRTIO_F_EVENT_IDX) &
                            ~feature_bit(VIRTIO_F_RING_PACKED);
  if (auto st = dev.negotiate(features); !st) {
    std::fprintf(stderr, "iovirt-blk-bench: %s\n", st.error().what().c_str());
    return 1;
  }

  const RegionSpec region[] = {{0, kMemSize}};
  auto mem = GuestMemory::create(region);
  if (!mem) {
    std::fprintf(stderr, "iovirt-blk-bench: %s\n", mem.error().what().c_str());
    return 1;
  }
  auto base_span = mem->span(0, kMemSize);
  if (!base_span) return 1;
  uint8_t* const base = base_span->data();

  // Fixed descriptors: slot i owns 3i (header), 3i+1 (data), 3i+2 (status).
  auto* desc = reinterpret_cast<VirtqDesc*>(base + kDescGpa);
  const uint16_t data_flags = o.write ? VIRTQ_DESC_F_NEXT
                                      : static_cast<uint16_t>(VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE);
  for (uint32_t i = 0; i < o.qd; ++i) {
    const auto h = static_cast<uint16_t>(3 * i);
    desc[h] = VirtqDesc{kHeaderGpa + 16ull * i, 16, VIRTQ_DESC_F_NEXT, static_cast<uint16_t>(h + 1)};
    desc[h + 1] = VirtqDesc{kDataGpa + uint64_t{kBlockSize} * i, kBlockSize, data_flags,
                            static_cast<uint16_t>(h + 2)};
    desc[h + 2] = VirtqDesc{kStatusGpa + i, 1, VIRTQ_DESC_F_WRITE, 0};
    std::memset(base + kDataGpa + uint64_t{kBlockSize} * i, static_cast<int>(0xa5 ^ i), kBlockSize);
  }
  auto* avail_flags = reinterpret_cast<uint16_t*>(base + kAvailGpa);
  auto* avail_idx = reinterpret_cast<uint16_t*>(base + kAvailGpa + 2);
  auto* avail_ring = reinterpret_cast<uint16_t*>(base + kAvailGpa + 4);
  auto* used_flags = reinterpret_cast<uint16_t*>(base + kUsedGpa);
  auto* used_idx = reinterpret_cast<uint16_t*>(base + kUsedGpa + 2);
  auto* used_ring = reinterpret_cast<VirtqUsedElem*>(base + kUsedGpa + 4);
  if (o.poll) *avail_flags = VIRTQ_AVAIL_F_NO_INTERRUPT;

  auto vq = Virtqueue::create(kQueueSize);
  auto kick = EventFd::create();
  auto call = EventFd::create();
  if (!vq || !kick || !call) {
    std::fprintf(stderr, "iovirt-blk-bench: cannot create the queue or eventfds\n");
    return 1;
  }
  if (auto st = vq->set_size(kQueueSize); !st) return 1;
  vq->set_desc_area(kDescGpa);
  vq->set_driver_area(kAvailGpa);
  vq->set_device_area(kUsedGpa);
  vq->set_ready(true);
  CallFd irq(std::move(*call));
  std::atomic<bool> failed{false};
  ActivateContext ctx;
  ctx.mem = &*mem;
  ctx.features = features;
  ctx.queues.push_back(QueueBinding{0, &*vq, kick->fd()});
  ctx.irq = &irq;
  ctx.fail = [&failed](const std::string& why) {
    std::fprintf(stderr, "iovirt-blk-bench: device failed: %s\n", why.c_str());
    failed = true;
  };
  if (auto st = dev.activate(std::move(ctx)); !st) {
    std::fprintf(stderr, "iovirt-blk-bench: %s\n", st.error().what().c_str());
    return 1;
  }

  // Latencies of the measured window, preallocated: up to 4 M IOPS worth.
  const auto max_samples = static_cast<size_t>(o.seconds * 4e6) + 1;
  std::vector<uint32_t> lat(max_samples);
  size_t nlat = 0;
  uint64_t dropped = 0;
  std::vector<uint64_t> submitted_at(o.qd, 0);
  std::vector<bool> in_flight(o.qd, false);
  Rng rng{0x9e3779b97f4a7c15ull ^ now_ns()};
  const uint32_t type = o.write ? blk::VIRTIO_BLK_T_OUT : blk::VIRTIO_BLK_T_IN;
  const uint32_t expect_len = o.write ? 1 : kBlockSize + 1;
  const int kick_fd = kick->fd();

  uint16_t shadow_avail = 0;
  uint16_t last_used = 0;
  auto queue_slot = [&](uint32_t i) {
    auto* hdr = reinterpret_cast<blk::BlkReqHeader*>(base + kHeaderGpa + 16ull * i);
    hdr->type = type;
    hdr->reserved = 0;
    hdr->sector = (rng.next() % blocks) * (kBlockSize / 512);
    base[kStatusGpa + i] = 0xff;
    avail_ring[shadow_avail % kQueueSize] = static_cast<uint16_t>(3 * i);
    ++shadow_avail;
    in_flight[i] = true;
    submitted_at[i] = now_ns();
  };
  auto publish_and_kick = [&]() {
    std::atomic_ref<uint16_t>(*avail_idx).store(shadow_avail, std::memory_order_release);
    // The avail idx store before reading the device's suppression flag (section 2.7.10).
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if ((std::atomic_ref<uint16_t>(*used_flags).load(std::memory_order_relaxed) &
         VIRTQ_USED_F_NO_NOTIFY) == 0) {
      const uint64_t one = 1;
      if (::write(kick_fd, &one, sizeof one) != sizeof one) std::perror("kick");
    }
  };

  for (uint32_t i = 0; i < o.qd; ++i) queue_slot(i);
  publish_and_kick();

  const uint64_t t0 = now_ns();
  const uint64_t measure_from = t0 + static_cast<uint64_t>(o.warmup * 1e9);
  const uint64_t measure_to = measure_from + static_cast<uint64_t>(o.seconds * 1e9);
  uint64_t done_in_window = 0;
  uint64_t errors = 0;
  uint64_t outstanding = o.qd;
  uint64_t waits = 0;
  bool stopping = false;
  int rc = 0;
  while (outstanding > 0) {
    uint16_t u = std::atomic_ref<uint16_t>(*used_idx).load(std::memory_order_acquire);
    if (u == last_used) {
      if (failed) {
        rc = 1;
        break;
      }
      if (!o.poll) {
        // The back-end writes the call fd after publishing used->idx: a completion missed by the
        // check above has its eventfd count waiting, so this read cannot sleep through it.
        // The fd is non-blocking (a back-end may set O_NONBLOCK on the shared description), so
        // sleep in poll() and then consume the count.
        uint64_t v = 0;
        ++waits;
        pollfd p{irq.fd(), POLLIN, 0};
        if (::poll(&p, 1, 10'000) == 0) {
          std::fprintf(stderr, "iovirt-blk-bench: no interrupt from the back-end for 10 s\n");
          rc = 1;
          break;
        }
        if (::read(irq.fd(), &v, sizeof v) < 0 && errno != EAGAIN && errno != EINTR) {
          std::perror("read call eventfd");
          rc = 1;
          break;
        }
      } else {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        // A wedged back-end must not hang the poller forever.
        if (now_ns() > measure_to + 10'000'000'000ull) {
          std::fprintf(stderr, "iovirt-blk-bench: no completion for 10 s after the run\n");
          rc = 1;
          break;
        }
      }
      continue;
    }
    const uint64_t t = now_ns();
    if (t >= measure_to) stopping = true;
    bool queued = false;
    while (last_used != u) {
      const VirtqUsedElem e = used_ring[last_used % kQueueSize];
      ++last_used;
      const uint32_t slot = e.id / 3;
      if (e.id % 3 != 0 || slot >= o.qd || !in_flight[slot]) {
        std::fprintf(stderr, "iovirt-blk-bench: back-end returned unknown used id %u\n", e.id);
        return 1;
      }
      in_flight[slot] = false;
      --outstanding;
      if (base[kStatusGpa + slot] != blk::VIRTIO_BLK_S_OK || e.len != expect_len) {
        if (errors++ < 5)
          std::fprintf(stderr, "iovirt-blk-bench: request failed: status %u, used len %u\n",
                       base[kStatusGpa + slot], e.len);
      }
      const uint64_t start = submitted_at[slot];
      if (start >= measure_from && t < measure_to) {
        ++done_in_window;
        const uint64_t d = t - start;
        if (nlat < lat.size()) {
          lat[nlat++] = static_cast<uint32_t>(std::min<uint64_t>(d, UINT32_MAX));
        } else {
          ++dropped;
        }
      }
      if (!stopping) {
        queue_slot(slot);
        ++outstanding;
        queued = true;
      }
    }
    if (queued) publish_and_kick();
  }
  if (rc == 0 && errors > 0) rc = 1;
  if (rc == 0 && nlat == 0) {
    std::fprintf(stderr, "iovirt-blk-bench: no request completed inside the measured window\n");
    rc = 1;
  }
  dev.reset();
  if (rc != 0 && nlat == 0) return rc;

  auto pct = [&](double p) {
    const auto k = static_cast<size_t>(p * static_cast<double>(nlat - 1));
    std::nth_element(lat.begin(), lat.begin() + static_cast<std::ptrdiff_t>(k),
                     lat.begin() + static_cast<std::ptrdiff_t>(nlat));
    return static_cast<double>(lat[k]) / 1000.0;
  };
  const double iops = static_cast<double>(done_in_window) / o.seconds;
  const double p50 = pct(0.50);
  const double p99 = pct(0.99);
  std::printf("%s qd=%u%s: %.0f IOPS, p50 %.1f us, p99 %.1f us (%" PRIu64
              " requests, %" PRIu64 " call waits, %" PRIu64 " errors%s)\n",
              o.write ? "randwrite" : "randread", o.qd, o.poll ? " poll" : "", iops, p50, p99,
              done_in_window, waits, errors, dropped > 0 ? ", latency samples dropped" : "");
  std::printf("RESULT %s %u %.0f %.1f %.1f\n", o.write ? "randwrite" : "randread", o.qd, iops, p50,
              p99);
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  return run(parse(argc, argv));
}
