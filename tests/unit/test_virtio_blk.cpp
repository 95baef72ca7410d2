// virtio-blk through the VirtioDevice contract: a real image file, real io_uring, real backend
// threads; the test plays the driver with DriverQueue on a split ring and a recording interrupt.
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/statfs.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>
#include <dirent.h>

#include "iovirt/core/eventfd.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/virtio/blk.hpp"
#include "iovirt/virtio/blk_request.hpp"
#include "iovirt/virtio/device.hpp"
#include "iovirt/virtio/ring.hpp"
#include "iovirt/virtio/testing/driver_queue.hpp"
#include "iovirt/virtio/virtqueue.hpp"

namespace iovirt::virtio {
namespace {

using namespace blk;  // NOLINT: wire constants
using testing::Buf;
using testing::DriverQueue;
using testing::DriverQueueLayout;

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kImageSize = kMiB;  // 2048 sectors
constexpr uint64_t kCapacity = kImageSize / 512;
constexpr uint64_t kBufBase = 2 * kMiB;  // request buffers: [2 MiB, 8 MiB)
constexpr uint64_t kMemSize = 8 * kMiB;
constexpr auto kTimeout = std::chrono::seconds(10);

// Polls cond until it holds or kTimeout passes (waiting, never a timing assertion).
bool wait_until(const std::function<bool()>& cond) {
  const auto deadline = std::chrono::steady_clock::now() + kTimeout;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return true;
}

// BlkConfig with chained setters (designated initializers trip -Wmissing-field-initializers).
struct Cfg {
  BlkConfig c;
  Cfg& path(std::string p) {
    c.path = std::move(p);
    return *this;
  }
  Cfg& readonly() {
    c.readonly = true;
    return *this;
  }
  Cfg& direct() {
    c.direct = true;
    return *this;
  }
  Cfg& queues(uint16_t n) {
    c.queues = n;
    return *this;
  }
  Cfg& queue_size(uint16_t n) {
    c.queue_size = n;
    return *this;
  }
  Cfg& serial(std::string v) {
    c.serial = std::move(v);
    return *this;
  }
  Cfg& poll_us(uint32_t us) {
    c.poll_us = us;
    return *this;
  }
  Cfg& io(BlkIo m) {
    c.io = m;
    return *this;
  }
};

class RecordingInterrupt final : public VirtioInterrupt {
 public:
  void notify_queue(uint16_t q) override { queue[q % queue.size()].fetch_add(1); }
  void notify_config() override { config.fetch_add(1); }
  int queue_irqfd(uint16_t) override { return -1; }
  std::array<std::atomic<uint32_t>, 8> queue{};
  std::atomic<uint32_t> config{0};
};

// A temporary image under /var/tmp (never tmpfs on Debian, so O_DIRECT can work).
class TempImage {
 public:
  explicit TempImage(uint64_t size, uint8_t fill = 0) {
    char tmpl[] = "/var/tmp/iovirt-blk-XXXXXX";
    const int fd = ::mkstemp(tmpl);
    EXPECT_GE(fd, 0);
    path_ = tmpl;
    std::vector<uint8_t> bytes(size, fill);
    EXPECT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(size));
    ::close(fd);
  }
  ~TempImage() { std::filesystem::remove(path_); }
  TempImage(const TempImage&) = delete;
  TempImage& operator=(const TempImage&) = delete;
  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] std::vector<uint8_t> read(uint64_t off, uint64_t len) const {
    std::vector<uint8_t> out(len);
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_EQ(::pread(fd, out.data(), len, static_cast<off_t>(off)), static_cast<ssize_t>(len));
    ::close(fd);
    return out;
  }

 private:
  std::string path_;
};

std::vector<uint8_t> pattern(size_t len, uint8_t seed) {
  std::vector<uint8_t> v(len);
  for (size_t i = 0; i < len; ++i) v[i] = static_cast<uint8_t>(seed + i * 7 + (i >> 9));
  return v;
}

// One driver-side queue: the device Virtqueue, the driver's view of the same ring and the kick fd.
struct TestQueue {
  Virtqueue vq;
  std::optional<DriverQueue> drv;
  EventFd kick;
};

struct Done {
  uint32_t len;
  uint8_t status;
};

// A request as laid out by the driver: header, data, status byte in guest memory.
struct Req {
  uint16_t head = 0;
  uint64_t hdr = 0;
  uint64_t data = 0;
  uint64_t status = 0;
};

class BlkTest : public ::testing::Test {
 protected:
  BlkIo io_mode_ = BlkIo::Auto;  // make_device()'s BlkConfig::io unless the test sets one

  void SetUp() override {
    const RegionSpec specs[] = {{0, kMemSize}};
    auto m = GuestMemory::create(specs);
    ASSERT_TRUE(m.has_value()) << m.error().message();
    mem.emplace(std::move(*m));
  }
  void TearDown() override {
    if (dev) dev->reset();
  }

  void make_device(Cfg cfg = {}) {
    if (cfg.c.path.empty()) cfg.c.path = image.path();
    if (cfg.c.io == BlkIo::Auto) cfg.c.io = io_mode_;
    auto d = VirtioBlk::create(cfg.c, metrics, "blk0");
    ASSERT_TRUE(d.has_value()) << d.error().message();
    dev = std::move(*d);
  }

  // Queue q's rings at q * 64 KiB: desc, avail +16 KiB, used +32 KiB.
  void make_queues(uint16_t n, uint16_t size, bool event_idx = false) {
    queues.clear();
    for (uint16_t q = 0; q < n; ++q) {
      auto vq = Virtqueue::create(size);
      ASSERT_TRUE(vq.has_value()) << vq.error().message();
      auto kick = EventFd::create();
      ASSERT_TRUE(kick.has_value());
      queues.push_back(
          std::make_unique<TestQueue>(TestQueue{std::move(*vq), {}, std::move(*kick)}));
      configure_queue(q, size, event_idx);
    }
  }

  void configure_queue(uint16_t q, uint16_t size, bool event_idx) {
    TestQueue& t = *queues[q];
    const uint64_t base = 0x10000ull * (q + 1);
    t.vq.reset();
    ASSERT_TRUE(t.vq.set_size(size).has_value());
    t.vq.set_desc_area(base);
    t.vq.set_driver_area(base + 0x4000);
    t.vq.set_device_area(base + 0x8000);
    t.vq.set_event_idx(event_idx);
    t.vq.set_indirect(true);
    t.vq.set_ready(true);
    ASSERT_TRUE(t.vq.validate(*mem).has_value());
    auto drv =
        DriverQueue::create(*mem, DriverQueueLayout{size, base, base + 0x4000, base + 0x8000});
    ASSERT_TRUE(drv.has_value()) << drv.error().message();
    t.drv.emplace(std::move(*drv));
  }

  Status activate(uint64_t features = ~0ull) {
    ActivateContext ctx;
    ctx.mem = &*mem;
    ctx.features = dev->features() & features;
    for (uint16_t q = 0; q < queues.size(); ++q) {
      ctx.queues.push_back(QueueBinding{q, &queues[q]->vq, queues[q]->kick.fd()});
    }
    ctx.irq = &irq;
    ctx.fail = [this](const std::string& why) {
      std::lock_guard lock(fail_mu);
      failures.push_back(why);
    };
    return dev->activate(std::move(ctx));
  }

  size_t failure_count() {
    std::lock_guard lock(fail_mu);
    return failures.size();
  }
  std::string first_failure() {
    std::lock_guard lock(fail_mu);
    return failures.empty() ? std::string() : failures.front();
  }

  uint64_t alloc(uint64_t len, uint64_t align = 16) {
    next_buf = (next_buf + align - 1) & ~(align - 1);
    const uint64_t gpa = next_buf;
    next_buf += len;
    EXPECT_LE(next_buf, kMemSize);
    return gpa;
  }

  void write_header(uint64_t gpa, uint32_t type, uint64_t sector) {
    const BlkReqHeader h{type, 0, sector};
    ASSERT_TRUE(mem->write_obj(gpa, h).has_value());
  }

  // Header (readable), optional data (device-writable for reads), status (writable). The chain is
  // direct, or indirect when `indirect` (so a whole queue of requests fits).
  Req add(uint16_t q, uint32_t type, uint64_t sector, uint32_t data_len, bool data_writable,
          std::span<const uint8_t> payload = {}, bool indirect = false, uint64_t data_align = 16) {
    Req r;
    r.hdr = alloc(16);
    write_header(r.hdr, type, sector);
    if (data_len > 0) {
      r.data = alloc(data_len, data_align);
      if (!payload.empty()) {
        EXPECT_TRUE(mem->write(r.data, payload).has_value());
      }
    }
    r.status = alloc(1);
    const uint8_t poison = 0xee;
    EXPECT_TRUE(mem->write(r.status, std::span<const uint8_t>(&poison, 1)).has_value());
    std::vector<Buf> bufs{{r.hdr, 16, false}};
    if (data_len > 0) bufs.push_back({r.data, data_len, data_writable});
    bufs.push_back({r.status, 1, true});
    r.head = add_bufs(q, bufs, indirect);
    return r;
  }

  uint16_t add_bufs(uint16_t q, std::span<const Buf> bufs, bool indirect = false) {
    auto head = indirect ? queues[q]->drv->add_indirect_chain(bufs, alloc(16 * bufs.size(), 16))
                         : queues[q]->drv->add_chain(bufs);
    EXPECT_TRUE(head.has_value()) << head.error().message();
    return head.value_or(0);
  }

  void kick(uint16_t q) { ASSERT_TRUE(queues[q]->kick.write(1).has_value()); }

  // Waits for n used elements on queue q; returns them in used-ring order, keyed by head.
  std::vector<VirtqUsedElem> wait_used(uint16_t q, size_t n) {
    std::vector<VirtqUsedElem> out;
    const bool ok = wait_until([&] {
      for (;;) {
        auto e = queues[q]->drv->take_used();
        if (!e || !e->has_value()) break;
        out.push_back(**e);
      }
      return out.size() >= n;
    });
    EXPECT_TRUE(ok) << "timed out waiting for " << n << " used buffers on queue " << q << ", got "
                    << out.size();
    return out;
  }

  uint8_t status_of(const Req& r) {
    uint8_t s = 0;
    EXPECT_TRUE(mem->read(r.status, std::span<uint8_t>(&s, 1)).has_value());
    return s;
  }

  // Submits one request on queue 0 and waits for it: {used len, status}.
  Done run1(uint32_t type, uint64_t sector, uint32_t data_len, bool data_writable,
            std::span<const uint8_t> payload = {}, Req* out = nullptr) {
    const Req r = add(0, type, sector, data_len, data_writable, payload);
    kick(0);
    auto used = wait_used(0, 1);
    if (out != nullptr) *out = r;
    if (used.empty()) return {0, 0xff};
    EXPECT_EQ(used[0].id, r.head);
    return {used[0].len, status_of(r)};
  }

  std::vector<uint8_t> guest_bytes(uint64_t gpa, size_t len) {
    std::vector<uint8_t> v(len);
    EXPECT_TRUE(mem->read(gpa, v).has_value());
    return v;
  }

  Status write_discard(uint64_t gpa, std::span<const BlkDiscardWriteZeroes> segs) {
    for (size_t i = 0; i < segs.size(); ++i) {
      if (auto st = mem->write_obj(gpa + 16 * i, segs[i]); !st) return st;
    }
    return {};
  }

  Done run_ranges(uint32_t type, std::span<const BlkDiscardWriteZeroes> segs) {
    const uint64_t hdr = alloc(16);
    write_header(hdr, type, 0);
    const uint64_t payload = alloc(16 * segs.size());
    EXPECT_TRUE(write_discard(payload, segs).has_value());
    const uint64_t status = alloc(1);
    const Buf bufs[] = {{hdr, 16, false},
                        {payload, static_cast<uint32_t>(16 * segs.size()), false},
                        {status, 1, true}};
    const uint16_t head = add_bufs(0, bufs);
    kick(0);
    auto used = wait_used(0, 1);
    if (used.empty()) return {0, 0xff};
    EXPECT_EQ(used[0].id, head);
    return {used[0].len, guest_bytes(status, 1)[0]};
  }

  TempImage image{kImageSize, 0x11};
  std::optional<GuestMemory> mem;
  MetricsRegistry metrics;
  std::unique_ptr<VirtioBlk> dev;
  std::vector<std::unique_ptr<TestQueue>> queues;
  RecordingInterrupt irq;
  std::mutex fail_mu;
  std::vector<std::string> failures;
  uint64_t next_buf = kBufBase;
};

TEST_F(BlkTest, ConfigSpaceAndFeatures) {
  make_device();
  EXPECT_EQ(dev->device_id(), kDeviceIdBlock);
  EXPECT_EQ(dev->num_queues(), 1);
  EXPECT_EQ(dev->config_size(), 60u);
  const uint64_t f = dev->features();
  for (unsigned bit : {VIRTIO_F_VERSION_1, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC,
                       VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH,
                       VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES}) {
    EXPECT_NE(f & feature_bit(bit), 0u) << "bit " << bit;
  }
  EXPECT_EQ(f & feature_bit(VIRTIO_BLK_F_RO), 0u);
  EXPECT_EQ(f & feature_bit(VIRTIO_BLK_F_MQ), 0u);

  std::array<uint8_t, 60> cfg{};
  dev->read_config(0, cfg);
  uint64_t capacity = 0;
  std::memcpy(&capacity, cfg.data(), 8);
  EXPECT_EQ(capacity, kCapacity);
  uint32_t seg_max = 0;
  std::memcpy(&seg_max, cfg.data() + 12, 4);
  EXPECT_EQ(seg_max, VirtioBlk::kSegMax);
  uint32_t blk_size = 0;
  std::memcpy(&blk_size, cfg.data() + 20, 4);
  EXPECT_EQ(blk_size, 512u);
  uint16_t nq = 0;
  std::memcpy(&nq, cfg.data() + 34, 2);
  EXPECT_EQ(nq, 1);
  uint32_t max_discard_seg = 0;
  std::memcpy(&max_discard_seg, cfg.data() + 40, 4);
  EXPECT_EQ(max_discard_seg, VirtioBlk::kMaxDiscardSeg);
  EXPECT_EQ(cfg[56], 1);  // write_zeroes_may_unmap

  // A read straddling the end of the config space is zero-filled, not out of bounds.
  std::array<uint8_t, 8> tail{};
  dev->read_config(56, tail);
  EXPECT_EQ(tail[0], 1);
  EXPECT_EQ(tail[7], 0);

  EXPECT_FALSE(dev->negotiate(0).has_value()) << "legacy drivers are refused";
  EXPECT_TRUE(dev->negotiate(f).has_value());
}

TEST_F(BlkTest, ReadOnlyAndMultiqueueFeatures) {
  make_device(Cfg().readonly().queues(4));
  const uint64_t f = dev->features();
  EXPECT_NE(f & feature_bit(VIRTIO_BLK_F_RO), 0u);
  EXPECT_NE(f & feature_bit(VIRTIO_BLK_F_MQ), 0u);
  EXPECT_EQ(f & feature_bit(VIRTIO_BLK_F_DISCARD), 0u);
  EXPECT_EQ(f & feature_bit(VIRTIO_BLK_F_WRITE_ZEROES), 0u);
  EXPECT_EQ(dev->config().num_queues, 4);
}

TEST_F(BlkTest, CreateRefusesBadConfigs) {
  EXPECT_FALSE(VirtioBlk::create(Cfg().path("/nonexistent/disk.img").c, metrics, "b").has_value());
  EXPECT_FALSE(VirtioBlk::create(Cfg().path(image.path()).queues(0).c, metrics, "b").has_value());
  EXPECT_FALSE(
      VirtioBlk::create(Cfg().path(image.path()).queue_size(100).c, metrics, "b").has_value());
  EXPECT_FALSE(
      VirtioBlk::create(Cfg().path(image.path()).serial(std::string(21, 'x')).c, metrics, "b")
          .has_value());
  TempImage tiny(100);
  auto r = VirtioBlk::create(Cfg().path(tiny.path()).c, metrics, "b");
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message().find("smaller than one 512-byte sector"), std::string::npos);
}

// The request paths below run with both ways to the file (BlkConfig::io): io_uring, and sync
// (inline preadv/pwritev/fdatasync; discard and write zeroes still go through io_uring).
class BlkIoTest : public BlkTest, public ::testing::WithParamInterface<BlkIo> {
 protected:
  BlkIoTest() { io_mode_ = GetParam(); }
};

INSTANTIATE_TEST_SUITE_P(Io, BlkIoTest, ::testing::Values(BlkIo::Uring, BlkIo::Sync),
                         [](const auto& p) { return std::string(to_string(p.param)); });

TEST_P(BlkIoTest, WriteThenReadBack) {
  make_device();
  make_queues(1, 64);
  ASSERT_TRUE(activate().has_value());

  const auto data = pattern(8192, 3);
  // Write from two readable data segments (scatter) at sector 10.
  const uint64_t hdr = alloc(16);
  write_header(hdr, VIRTIO_BLK_T_OUT, 10);
  const uint64_t d1 = alloc(4096, 4096);
  const uint64_t d2 = alloc(4096, 4096);
  ASSERT_TRUE(mem->write(d1, std::span(data).first(4096)).has_value());
  ASSERT_TRUE(mem->write(d2, std::span(data).subspan(4096)).has_value());
  const uint64_t st = alloc(1);
  const Buf w[] = {{hdr, 16, false}, {d1, 4096, false}, {d2, 4096, false}, {st, 1, true}};
  const uint16_t head = add_bufs(0, w);
  kick(0);
  auto used = wait_used(0, 1);
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].id, head);
  EXPECT_EQ(used[0].len, 1u);
  EXPECT_EQ(guest_bytes(st, 1)[0], VIRTIO_BLK_S_OK);
  EXPECT_EQ(image.read(10 * 512, 8192), data);
  EXPECT_EQ(image.read(9 * 512, 512), std::vector<uint8_t>(512, 0x11)) << "neighbour untouched";

  Req r;
  const Done d = run1(VIRTIO_BLK_T_IN, 10, 8192, true, {}, &r);
  EXPECT_EQ(d.status, VIRTIO_BLK_S_OK);
  EXPECT_EQ(d.len, 8193u);
  EXPECT_EQ(guest_bytes(r.data, 8192), data);

  const QueueMetrics qm = QueueMetrics::create(metrics, "blk0", 0);
  EXPECT_EQ(qm.chains->value(), 2u);
  EXPECT_EQ(qm.bytes->value(), 16384u);
  // At least the first kick is counted. The second may not be yet: the worker can find the
  // second request in its re-check after re-enabling notifications and complete it (at once
  // with sync I/O) before it reaps that kick, and two kicks read together count once.
  EXPECT_GE(qm.kicks->value(), 1u);
  EXPECT_GE(irq.queue[0].load(), 1u);
  const std::string expo = metrics.expose();
  EXPECT_NE(expo.find("iovirt_virtio_blk_request_seconds_count{device=\"blk0\",op=\"write\","
                      "queue=\"0\"} 1"),
            std::string::npos)
      << expo;
}

// Section 2.6.4: no framing assumptions. The header is split over two descriptors, the data
// shares a descriptor with the header tail, and the status byte shares one with read data.
TEST_P(BlkIoTest, FramingIndependent) {
  make_device();
  make_queues(1, 64);
  ASSERT_TRUE(activate().has_value());
  const auto data = pattern(1024, 9);

  const uint64_t wbuf = alloc(16 + 1024);
  write_header(wbuf, VIRTIO_BLK_T_OUT, 100);
  ASSERT_TRUE(mem->write(wbuf + 16, data).has_value());
  const uint64_t st = alloc(1);
  const Buf w[] = {{wbuf, 8, false}, {wbuf + 8, 8 + 1024, false}, {st, 1, true}};
  add_bufs(0, w);
  kick(0);
  ASSERT_EQ(wait_used(0, 1).size(), 1u);
  EXPECT_EQ(guest_bytes(st, 1)[0], VIRTIO_BLK_S_OK);
  EXPECT_EQ(image.read(100 * 512, 1024), data);

  const uint64_t hdr = alloc(16);
  write_header(hdr, VIRTIO_BLK_T_IN, 100);
  const uint64_t rbuf = alloc(1025);
  const Buf rd[] = {{hdr, 16, false}, {rbuf, 100, true}, {rbuf + 100, 925, true}};
  add_bufs(0, rd);
  kick(0);
  auto used = wait_used(0, 1);
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].len, 1025u);
  EXPECT_EQ(guest_bytes(rbuf, 1024), data);
  EXPECT_EQ(guest_bytes(rbuf + 1024, 1)[0], VIRTIO_BLK_S_OK);
}

TEST_P(BlkIoTest, FlushAndGetId) {
  make_device(Cfg().serial("disk-serial-1"));
  make_queues(1, 64);
  ASSERT_TRUE(activate().has_value());
  EXPECT_EQ(run1(VIRTIO_BLK_T_FLUSH, 0, 0, false).status, VIRTIO_BLK_S_OK);

  Req r;
  const Done d = run1(VIRTIO_BLK_T_GET_ID, 0, 20, true, {}, &r);
  EXPECT_EQ(d.status, VIRTIO_BLK_S_OK);
  EXPECT_EQ(d.len, 21u);
  std::vector<uint8_t> want(20, 0);
  std::memcpy(want.data(), "disk-serial-1", 13);
  EXPECT_EQ(guest_bytes(r.data, 20), want);
}

TEST_F(BlkTest, DefaultSerialIsStableAndTwentyBytes) {
  make_device();
  EXPECT_EQ(dev->serial().size(), 20u);
  EXPECT_EQ(dev->serial().rfind("iovirt", 0), 0u);
  auto again = VirtioBlk::create(Cfg().path(image.path()).c, metrics, "blk1");
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ((*again)->serial(), dev->serial());
}

TEST_P(BlkIoTest, DiscardAndWriteZeroesChangeTheFile) {
  make_device();
  make_queues(1, 64);
  ASSERT_TRUE(activate().has_value());
  const std::vector<uint8_t> zeros(4096, 0);
  const std::vector<uint8_t> fill(4096, 0x11);

  const BlkDiscardWriteZeroes discard[] = {{8, 8, 0}, {64, 8, 0}};
  EXPECT_EQ(run_ranges(VIRTIO_BLK_T_DISCARD, discard).status, VIRTIO_BLK_S_OK);
  EXPECT_EQ(image.read(8 * 512, 4096), zeros);
  EXPECT_EQ(image.read(64 * 512, 4096), zeros);
  EXPECT_EQ(image.read(16 * 512, 4096), fill);

  const BlkDiscardWriteZeroes wz[] = {{128, 8, 0}, {256, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP}};
  EXPECT_EQ(run_ranges(VIRTIO_BLK_T_WRITE_ZEROES, wz).status, VIRTIO_BLK_S_OK);
  EXPECT_EQ(image.read(128 * 512, 4096), zeros);
  EXPECT_EQ(image.read(256 * 512, 4096), zeros);
  EXPECT_EQ(image.read(136 * 512, 4096), fill);
  EXPECT_EQ(std::filesystem::file_size(image.path()), kImageSize) << "KEEP_SIZE";

  // Section 5.2.6.2: unmap on a discard and unknown flags are UNSUPP; the file is untouched.
  const BlkDiscardWriteZeroes unmap[] = {{512, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP}};
  EXPECT_EQ(run_ranges(VIRTIO_BLK_T_DISCARD, unmap).status, VIRTIO_BLK_S_UNSUPP);
  const BlkDiscardWriteZeroes unknown[] = {{512, 8, 4}};
  EXPECT_EQ(run_ranges(VIRTIO_BLK_T_WRITE_ZEROES, unknown).status, VIRTIO_BLK_S_UNSUPP);
  EXPECT_EQ(image.read(512 * 512, 4096), fill);

  // Beyond the capacity, overflowing, too many segments, above the sector maximum: IOERR.
  const BlkDiscardWriteZeroes beyond[] = {{kCapacity - 4, 8, 0}};
  EXPECT_EQ(run_ranges(VIRTIO_BLK_T_DISCARD, beyond).status, VIRTIO_BLK_S_IOERR);
  const BlkDiscardWriteZeroes wrap[] = {{~0ull - 2, 8, 0}};
  EXPECT_EQ(run_ranges(VIRTIO_BLK_T_DISCARD, wrap).status, VIRTIO_BLK_S_IOERR);
  std::vector<BlkDiscardWriteZeroes> many(VirtioBlk::kMaxDiscardSeg + 1, {600, 1, 0});
  EXPECT_EQ(run_ranges(VIRTIO_BLK_T_DISCARD, many).status, VIRTIO_BLK_S_IOERR);
  const BlkDiscardWriteZeroes huge[] = {{0, VirtioBlk::kMaxDiscardSectors + 1, 0}};
  EXPECT_EQ(run_ranges(VIRTIO_BLK_T_WRITE_ZEROES, huge).status, VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(image.read(kCapacity * 512 - 2048, 2048), std::vector<uint8_t>(2048, 0x11));
  EXPECT_EQ(image.read(0, 4096), fill);
}

TEST_F(BlkTest, DiscardNotNegotiatedIsUnsupported) {
  make_device();
  make_queues(1, 64);
  ASSERT_TRUE(activate(~feature_bit(VIRTIO_BLK_F_DISCARD)).has_value());
  const BlkDiscardWriteZeroes discard[] = {{8, 8, 0}};
  EXPECT_EQ(run_ranges(VIRTIO_BLK_T_DISCARD, discard).status, VIRTIO_BLK_S_UNSUPP);
  EXPECT_EQ(image.read(8 * 512, 4096), std::vector<uint8_t>(4096, 0x11));
}

TEST_P(BlkIoTest, OutOfRangeAndMisalignedAreIoErr) {
  make_device();
  make_queues(1, 64);
  ASSERT_TRUE(activate().has_value());
  EXPECT_EQ(run1(VIRTIO_BLK_T_IN, kCapacity - 1, 1024, true).status, VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(run1(VIRTIO_BLK_T_IN, kCapacity, 512, true).status, VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(run1(VIRTIO_BLK_T_IN, ~0ull, 512, true).status, VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(run1(VIRTIO_BLK_T_IN, ~0ull >> 9, 512, true).status, VIRTIO_BLK_S_IOERR);
  const auto data = pattern(1024, 1);
  EXPECT_EQ(run1(VIRTIO_BLK_T_OUT, kCapacity - 1, 1024, false, data).status, VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(run1(VIRTIO_BLK_T_IN, 0, 100, true).status, VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(run1(VIRTIO_BLK_T_OUT, 0, 513, false, pattern(513, 2)).status, VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(image.read(0, 1024), std::vector<uint8_t>(1024, 0x11));
  EXPECT_EQ(image.read(kImageSize - 512, 512), std::vector<uint8_t>(512, 0x11));
  // The last sector itself is fine.
  EXPECT_EQ(run1(VIRTIO_BLK_T_IN, kCapacity - 1, 512, true).status, VIRTIO_BLK_S_OK);
  EXPECT_EQ(failure_count(), 0u);
}

// The image shrinks under the device (another process truncates it): reads past the new end
// come back short from the kernel and complete with IOERR, not with stale or partial data.
TEST_P(BlkIoTest, ShortReadIsIoErr) {
  make_device();
  make_queues(1, 64);
  ASSERT_TRUE(activate().has_value());
  ASSERT_EQ(::truncate(image.path().c_str(), 512 * 1024), 0);
  Req r;
  const Done beyond = run1(VIRTIO_BLK_T_IN, 1500, 512, true, {}, &r);
  EXPECT_EQ(beyond.status, VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(beyond.len, 1u);
  const Done straddling = run1(VIRTIO_BLK_T_IN, 1022, 2048, true);
  EXPECT_EQ(straddling.status, VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(run1(VIRTIO_BLK_T_IN, 1016, 2048, true).status, VIRTIO_BLK_S_OK);
  EXPECT_EQ(QueueMetrics::create(metrics, "blk0", 0).bytes->value(), 2048u) << "only the full read";
}

TEST_P(BlkIoTest, ReadOnlyRefusesWrites) {
  make_device(Cfg().readonly());
  make_queues(1, 64);
  ASSERT_TRUE(activate().has_value());
  const auto data = pattern(512, 5);
  EXPECT_EQ(run1(VIRTIO_BLK_T_OUT, 0, 512, false, data).status, VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(image.read(0, 512), std::vector<uint8_t>(512, 0x11));
  Req r;
  EXPECT_EQ(run1(VIRTIO_BLK_T_IN, 0, 512, true, {}, &r).status, VIRTIO_BLK_S_OK);
  EXPECT_EQ(guest_bytes(r.data, 512), std::vector<uint8_t>(512, 0x11));
  // Not offered, so not negotiated: UNSUPP.
  const BlkDiscardWriteZeroes discard[] = {{0, 8, 0}};
  EXPECT_EQ(run_ranges(VIRTIO_BLK_T_DISCARD, discard).status, VIRTIO_BLK_S_UNSUPP);
}

TEST_F(BlkTest, MalformedRequestsCompleteWithErrors) {
  make_device();
  make_queues(1, 64);
  ASSERT_TRUE(activate().has_value());

  // Header of 8 bytes.
  {
    const uint64_t hdr = alloc(16);
    write_header(hdr, VIRTIO_BLK_T_IN, 0);
    const uint64_t st = alloc(1);
    const Buf b[] = {{hdr, 8, false}, {st, 1, true}};
    add_bufs(0, b);
    kick(0);
    auto used = wait_used(0, 1);
    ASSERT_EQ(used.size(), 1u);
    EXPECT_EQ(used[0].len, 1u);
    EXPECT_EQ(guest_bytes(st, 1)[0], VIRTIO_BLK_S_IOERR);
  }
  // Data in the wrong direction: a read with device-readable data, a write with writable data.
  EXPECT_EQ(run1(VIRTIO_BLK_T_IN, 0, 512, false, pattern(512, 1)).status, VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(run1(VIRTIO_BLK_T_OUT, 0, 512, true).status, VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(image.read(0, 512), std::vector<uint8_t>(512, 0x11));
  // Unknown and unimplemented types.
  EXPECT_EQ(run1(99, 0, 0, false).status, VIRTIO_BLK_S_UNSUPP);
  EXPECT_EQ(run1(VIRTIO_BLK_T_GET_LIFETIME, 0, 16, true).status, VIRTIO_BLK_S_UNSUPP);
  EXPECT_EQ(run1(VIRTIO_BLK_T_SECURE_ERASE, 0, 0, false).status, VIRTIO_BLK_S_UNSUPP);
  // More data segments than seg_max (via an indirect table).
  {
    const uint64_t hdr = alloc(16);
    write_header(hdr, VIRTIO_BLK_T_IN, 0);
    std::vector<Buf> b{{hdr, 16, false}};
    const uint64_t data = alloc(512 * (VirtioBlk::kSegMax + 1));
    for (uint32_t i = 0; i <= VirtioBlk::kSegMax; ++i) b.push_back({data + 512 * i, 512, true});
    const uint64_t st = alloc(1);
    b.push_back({st, 1, true});
    add_bufs(0, b, true);
    kick(0);
    ASSERT_EQ(wait_used(0, 1).size(), 1u);
    EXPECT_EQ(guest_bytes(st, 1)[0], VIRTIO_BLK_S_IOERR);
  }
  EXPECT_EQ(failure_count(), 0u) << first_failure();
  // The queue still serves.
  EXPECT_EQ(run1(VIRTIO_BLK_T_FLUSH, 0, 0, false).status, VIRTIO_BLK_S_OK);
}

TEST_F(BlkTest, ChainWithoutStatusByteFailsTheDevice) {
  make_device();
  make_queues(1, 64);
  ASSERT_TRUE(activate().has_value());
  const uint64_t hdr = alloc(16);
  write_header(hdr, VIRTIO_BLK_T_FLUSH, 0);
  const uint64_t st = alloc(1);
  const Buf b[] = {{hdr, 16, false}, {st, 1, false}};  // status not device-writable
  add_bufs(0, b);
  kick(0);
  ASSERT_TRUE(wait_until([&] { return failure_count() > 0; }));
  EXPECT_NE(first_failure().find("no device-writable status byte"), std::string::npos)
      << first_failure();
  EXPECT_EQ(*queues[0]->drv->used_idx(), 0) << "nothing completed";
  dev->reset();
}

TEST_F(BlkTest, HostileRingFailsTheDeviceWhichSurvivesAndReactivates) {
  make_device();
  make_queues(1, 64);
  ASSERT_TRUE(activate().has_value());
  // A descriptor pointing outside guest memory.
  ASSERT_TRUE(queues[0]->drv->write_desc(0, VirtqDesc{kMemSize + 4096, 16, 0, 0}).has_value());
  ASSERT_TRUE(queues[0]->drv->publish_head(0).has_value());
  kick(0);
  ASSERT_TRUE(wait_until([&] { return failure_count() > 0; }));
  EXPECT_NE(first_failure().find("blk0 queue 0"), std::string::npos) << first_failure();
  // Later kicks are ignored without another failure storm being required to stop.
  kick(0);
  dev->reset();

  // The transport resets the queue; the driver starts over.
  configure_queue(0, 64, false);
  ASSERT_TRUE(activate().has_value());
  const auto data = pattern(512, 8);
  EXPECT_EQ(run1(VIRTIO_BLK_T_OUT, 3, 512, false, data).status, VIRTIO_BLK_S_OK);
  EXPECT_EQ(image.read(3 * 512, 512), data);
}

// The same head published twice in one batch: the first is still in flight (its write sits in
// io_uring until the batch is reaped) when the second is popped.
TEST_F(BlkTest, HeadReusedWhileInFlightFailsTheDevice) {
  make_device();
  make_queues(1, 64);
  ASSERT_TRUE(activate().has_value());
  const Req r = add(0, VIRTIO_BLK_T_OUT, 0, 4096, false, pattern(4096, 1));
  ASSERT_TRUE(queues[0]->drv->publish_head(r.head).has_value());
  kick(0);
  ASSERT_TRUE(wait_until([&] { return failure_count() > 0; }));
  EXPECT_NE(first_failure().find("while in flight"), std::string::npos) << first_failure();
  dev->reset();
  configure_queue(0, 64, false);
  ASSERT_TRUE(activate().has_value());
  EXPECT_EQ(run1(VIRTIO_BLK_T_FLUSH, 0, 0, false).status, VIRTIO_BLK_S_OK);
}

TEST_P(BlkIoTest, FullQueueOfRequestsInFlight) {
  constexpr uint16_t kSize = 128;
  make_device(Cfg().queue_size(kSize));
  make_queues(1, kSize);
  ASSERT_TRUE(activate().has_value());
  std::vector<Req> reqs;
  for (uint16_t i = 0; i < kSize; ++i) {
    const auto data = pattern(4096, static_cast<uint8_t>(i));
    reqs.push_back(add(0, VIRTIO_BLK_T_OUT, 8ull * i, 4096, false, data, true));
  }
  kick(0);
  auto used = wait_used(0, kSize);
  ASSERT_EQ(used.size(), kSize);
  for (const Req& r : reqs) EXPECT_EQ(status_of(r), VIRTIO_BLK_S_OK);
  for (uint16_t i = 0; i < kSize; ++i) {
    ASSERT_EQ(image.read(4096ull * i, 4096), pattern(4096, static_cast<uint8_t>(i))) << i;
  }
  // And a full queue of reads back.
  next_buf = kBufBase;
  reqs.clear();
  for (uint16_t i = 0; i < kSize; ++i)
    reqs.push_back(add(0, VIRTIO_BLK_T_IN, 8ull * i, 4096, true, {}, true));
  kick(0);
  ASSERT_EQ(wait_used(0, kSize).size(), kSize);
  for (uint16_t i = 0; i < kSize; ++i) {
    EXPECT_EQ(status_of(reqs[i]), VIRTIO_BLK_S_OK);
    ASSERT_EQ(guest_bytes(reqs[i].data, 4096), pattern(4096, static_cast<uint8_t>(i))) << i;
  }
  EXPECT_EQ(failure_count(), 0u) << first_failure();
}

std::vector<std::string> thread_names() {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream f(e.path() / "comm");
    std::string n;
    std::getline(f, n);
    names.push_back(n);
  }
  return names;
}

TEST_F(BlkTest, MultiqueueServesEachQueueOnItsOwnThread) {
  make_device(Cfg().queues(2).queue_size(64));
  make_queues(2, 64);
  ASSERT_TRUE(activate().has_value());
  // Each worker names itself as it starts.
  EXPECT_TRUE(wait_until([] {
    const auto names = thread_names();
    return std::find(names.begin(), names.end(), "blk0-q0") != names.end() &&
           std::find(names.begin(), names.end(), "blk0-q1") != names.end();
  }));

  std::vector<Req> r0;
  std::vector<Req> r1;
  for (uint16_t i = 0; i < 8; ++i) {
    r0.push_back(add(0, VIRTIO_BLK_T_OUT, 8ull * i, 4096, false, pattern(4096, 1), true));
    r1.push_back(add(1, VIRTIO_BLK_T_OUT, 512 + 8ull * i, 4096, false, pattern(4096, 2), true));
  }
  kick(0);
  kick(1);
  ASSERT_EQ(wait_used(0, 8).size(), 8u);
  ASSERT_EQ(wait_used(1, 8).size(), 8u);
  for (const Req& r : r0) EXPECT_EQ(status_of(r), VIRTIO_BLK_S_OK);
  for (const Req& r : r1) EXPECT_EQ(status_of(r), VIRTIO_BLK_S_OK);
  EXPECT_EQ(image.read(0, 4096), pattern(4096, 1));
  EXPECT_EQ(image.read(512 * 512, 4096), pattern(4096, 2));
  EXPECT_EQ(QueueMetrics::create(metrics, "blk0", 0).chains->value(), 8u);
  EXPECT_EQ(QueueMetrics::create(metrics, "blk0", 1).chains->value(), 8u);
  EXPECT_TRUE(wait_until([&] { return irq.queue[0].load() > 0 && irq.queue[1].load() > 0; }));

  dev->reset();
  const auto after = thread_names();
  EXPECT_EQ(std::find(after.begin(), after.end(), "blk0-q0"), after.end()) << "threads joined";
}

TEST_P(BlkIoTest, ResetWithRequestsInFlightThenReactivate) {
  constexpr uint16_t kSize = 64;
  make_device(Cfg().queue_size(kSize));
  make_queues(1, kSize);
  ASSERT_TRUE(activate().has_value());
  for (uint16_t i = 0; i < kSize; ++i) add(0, VIRTIO_BLK_T_IN, 0, 16384, true, {}, true);
  kick(0);
  dev->reset();  // must return, with no I/O left writing guest memory
  dev->reset();  // idempotent

  configure_queue(0, kSize, false);
  next_buf = kBufBase;
  ASSERT_TRUE(activate().has_value());
  const auto data = pattern(2048, 4);
  EXPECT_EQ(run1(VIRTIO_BLK_T_OUT, 40, 2048, false, data).status, VIRTIO_BLK_S_OK);
  Req r;
  EXPECT_EQ(run1(VIRTIO_BLK_T_IN, 40, 2048, true, {}, &r).status, VIRTIO_BLK_S_OK);
  EXPECT_EQ(guest_bytes(r.data, 2048), data);
  EXPECT_EQ(failure_count(), 0u) << first_failure();
}

TEST_F(BlkTest, EventIdxSuppressesInterrupts) {
  constexpr uint16_t kN = 32;
  make_device(Cfg().queue_size(64));
  make_queues(1, 64, true);
  ASSERT_TRUE(activate().has_value());
  // The first used buffer always interrupts (the device has no earlier decision to compare with).
  EXPECT_EQ(run1(VIRTIO_BLK_T_FLUSH, 0, 0, false).status, VIRTIO_BLK_S_OK);
  ASSERT_TRUE(wait_until([&] { return irq.queue[0].load() == 1; }));
  // Then the driver wants one interrupt, once kN more buffers are used (section 2.7.10).
  ASSERT_TRUE(queues[0]->drv->set_used_event(kN).has_value());
  for (uint16_t i = 0; i < kN; ++i) {
    add(0, VIRTIO_BLK_T_OUT, 8ull * i, 4096, false, pattern(4096, 7), true);
  }
  kick(0);
  ASSERT_EQ(wait_used(0, kN).size(), kN);
  ASSERT_TRUE(wait_until([&] { return irq.queue[0].load() >= 2; }));
  dev->reset();  // no more completions can come; the count is final
  EXPECT_EQ(irq.queue[0].load(), 2u) << "one interrupt for the kN buffers";
  const QueueMetrics qm = QueueMetrics::create(metrics, "blk0", 0);
  EXPECT_EQ(qm.interrupts->value(), 2u);
  EXPECT_EQ(qm.chains->value(), kN + 1u);
  // The device asked to be kicked at its next avail index.
  EXPECT_EQ(*queues[0]->drv->avail_event(), kN + 1);
}

// The scheduler state of this process's thread named `comm` ('R', 'S', 'D', ...; 0 if none).
char thread_state(const std::string& comm) {
  DIR* d = ::opendir("/proc/self/task");
  if (d == nullptr) return 0;
  char state = 0;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    const std::string base = std::string("/proc/self/task/") + e->d_name;
    std::ifstream c(base + "/comm");
    std::string name;
    std::getline(c, name);
    if (name != comm) continue;
    std::ifstream st(base + "/stat");
    std::string line;
    std::getline(st, line);
    const auto paren = line.rfind(')');
    if (paren != std::string::npos && paren + 2 < line.size()) state = line[paren + 2];
    break;
  }
  ::closedir(d);
  return state;
}

// Busy-poll (BlkConfig::poll_us), with EVENT_IDX off and on: inside the window a request the
// driver never kicks is still served; after an idle window the worker re-enables notifications
// and really sleeps (blocked in the kernel), so an unkicked request waits until the kick.
class BlkPollTest : public BlkTest, public ::testing::WithParamInterface<bool> {};

TEST_P(BlkPollTest, ServesWithoutKicksInsideTheWindowAndSleepsAfterIt) {
  const bool event_idx = GetParam();
  // A 1 s window: long enough that the unkicked request lands inside it on a loaded host.
  make_device(Cfg().queue_size(64).poll_us(1'000'000));
  make_queues(1, 64, event_idx);
  ASSERT_TRUE(activate().has_value());
  const auto data = pattern(4096, 9);
  ASSERT_EQ(run1(VIRTIO_BLK_T_OUT, 16, 4096, false, data).status, VIRTIO_BLK_S_OK);
  const QueueMetrics qm = QueueMetrics::create(metrics, "blk0", 0);
  const uint64_t kicks = qm.kicks->value();

  // Right after a completion: the worker is polling, no kick needed.
  const Req r = add(0, VIRTIO_BLK_T_IN, 16, 4096, true);
  auto used = wait_used(0, 1);
  ASSERT_EQ(used.size(), 1u) << "an unkicked request was not served inside the poll window";
  EXPECT_EQ(used[0].id, r.head);
  EXPECT_EQ(status_of(r), VIRTIO_BLK_S_OK);
  EXPECT_EQ(guest_bytes(r.data, 4096), data);
  EXPECT_EQ(qm.kicks->value(), kicks) << "the driver did not kick; nothing else may have";

  // The window ends: notifications back on (section 2.7.10: used flags clear, or avail_event
  // caught up with the two requests) and the worker blocked in io_uring_enter, not spinning.
  ASSERT_TRUE(wait_until([&] {
    if (event_idx) return queues[0]->drv->avail_event().value_or(0) == 2;
    return (queues[0]->drv->used_flags().value_or(VIRTQ_USED_F_NO_NOTIFY) &
            VIRTQ_USED_F_NO_NOTIFY) == 0;
  })) << "notifications were never re-enabled";
  ASSERT_TRUE(wait_until([&] { return thread_state("blk0-q0") == 'S'; }))
      << "the worker never went to sleep after the poll window";

  // Asleep: an unkicked request stays unserved (the driver would have kicked: notifications are
  // on) until the kick.
  const Req late = add(0, VIRTIO_BLK_T_IN, 24, 4096, true);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto none = queues[0]->drv->take_used();
  ASSERT_TRUE(none.has_value());
  EXPECT_FALSE(none->has_value()) << "served without a kick after the window: still spinning";
  EXPECT_EQ(thread_state("blk0-q0"), 'S');
  kick(0);
  used = wait_used(0, 1);
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].id, late.head);
  EXPECT_EQ(status_of(late), VIRTIO_BLK_S_OK);
  EXPECT_EQ(failure_count(), 0u) << first_failure();
}

INSTANTIATE_TEST_SUITE_P(EventIdx, BlkPollTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return i.param ? std::string("on") : std::string("off");
                         });

TEST_F(BlkTest, PollWindowAboveOneSecondIsRefused) {
  BlkConfig c;
  c.path = image.path();
  c.poll_us = VirtioBlk::kMaxPollUs + 1;
  auto d = VirtioBlk::create(c, metrics, "blk0");
  ASSERT_FALSE(d.has_value());
  EXPECT_NE(d.error().message().find("poll_us"), std::string::npos) << d.error().message();
}

TEST_F(BlkTest, DirectIo) {
  auto d = VirtioBlk::create(Cfg().path(image.path()).direct().c, metrics, "blk0");
  if (!d) GTEST_SKIP() << "O_DIRECT unavailable here: " << d.error().message();
  dev = std::move(*d);
  EXPECT_GE(dev->config().blk_size, 512u);
  make_queues(1, 64);
  ASSERT_TRUE(activate().has_value());
  const auto data = pattern(8192, 6);
  const Req w = add(0, VIRTIO_BLK_T_OUT, 64, 8192, false, data, false, 4096);
  kick(0);
  ASSERT_EQ(wait_used(0, 1).size(), 1u);
  EXPECT_EQ(status_of(w), VIRTIO_BLK_S_OK);
  EXPECT_EQ(image.read(64 * 512, 8192), data);
  const Req r = add(0, VIRTIO_BLK_T_IN, 64, 8192, true, {}, false, 4096);
  kick(0);
  ASSERT_EQ(wait_used(0, 1).size(), 1u);
  EXPECT_EQ(status_of(r), VIRTIO_BLK_S_OK);
  EXPECT_EQ(guest_bytes(r.data, 8192), data);
  EXPECT_EQ(run1(VIRTIO_BLK_T_FLUSH, 0, 0, false).status, VIRTIO_BLK_S_OK);
}

// Auto picks sync for a RAM-backed file (io_uring would punt every request on it to a kernel
// worker) and io_uring elsewhere; an explicit mode is kept; the resolved mode is what runs.
TEST_F(BlkTest, AutoIoIsSyncOnTmpfsAndIoUringElsewhere) {
  auto on_disk = VirtioBlk::create(Cfg().path(image.path()).c, metrics, "blk0");
  ASSERT_TRUE(on_disk.has_value()) << on_disk.error().message();
  EXPECT_EQ((*on_disk)->io_mode(), BlkIo::Uring) << image.path() << " is not RAM-backed";
  auto forced = VirtioBlk::create(Cfg().path(image.path()).io(BlkIo::Sync).c, metrics, "blk1");
  ASSERT_TRUE(forced.has_value());
  EXPECT_EQ((*forced)->io_mode(), BlkIo::Sync);

  struct statfs sfs {};
  if (::statfs("/dev/shm", &sfs) != 0 || sfs.f_type != TMPFS_MAGIC) {
    GTEST_SKIP() << "/dev/shm is not tmpfs here";
  }
  char tmpl[] = "/dev/shm/iovirt-blk-XXXXXX";
  const int fd = ::mkstemp(tmpl);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 1 << 20), 0);
  ::close(fd);
  auto ram = VirtioBlk::create(Cfg().path(tmpl).c, metrics, "blk2");
  auto ram_uring = VirtioBlk::create(Cfg().path(tmpl).io(BlkIo::Uring).c, metrics, "blk3");
  std::filesystem::remove(tmpl);
  ASSERT_TRUE(ram.has_value()) << ram.error().message();
  EXPECT_EQ((*ram)->io_mode(), BlkIo::Sync);
  ASSERT_TRUE(ram_uring.has_value());
  EXPECT_EQ((*ram_uring)->io_mode(), BlkIo::Uring);
}

TEST(BlkIoParse, NamesRoundTrip) {
  for (BlkIo m : {BlkIo::Auto, BlkIo::Uring, BlkIo::Sync}) EXPECT_EQ(parse_blk_io(to_string(m)), m);
  EXPECT_EQ(parse_blk_io("uring"), BlkIo::Uring);
  EXPECT_FALSE(parse_blk_io("threads").has_value());
  EXPECT_FALSE(parse_blk_io("").has_value());
}

}  // namespace
}  // namespace iovirt::virtio
