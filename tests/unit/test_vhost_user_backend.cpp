// vhost-user back-end: the test is a real front-end. It owns guest memory (memfds), shares it
// with SET_MEM_TABLE over a socketpair, programs the rings with the message sequence QEMU's
// vhost_dev_start uses, plays the virtio-blk driver on the split ring with DriverQueue, kicks
// through its own eventfd and waits on its call eventfd, while the backend serves a real
// VirtioBlk (io_uring, a thread per queue) over a temporary image file. Hostile-peer tests send
// malformed or inconsistent messages and check that exactly that connection is closed with a
// reason, and that the server loop then serves the next front-end. The last tests run the
// iovirt-vhost binary itself.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "iovirt/core/guest_memory.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/virtio/blk.hpp"
#include "iovirt/virtio/blk_request.hpp"
#include "iovirt/virtio/inflight.hpp"
#include "iovirt/virtio/ring.hpp"
#include "iovirt/virtio/testing/driver_packed_queue.hpp"
#include "iovirt/virtio/testing/driver_queue.hpp"
#include "iovirt/virtio/vhost_user/backend.hpp"
#include "iovirt/virtio/vhost_user/protocol.hpp"

extern char** environ;

namespace iovirt::virtio::vhost_user {
namespace {

using blk::BlkReqHeader;
using testing::Buf;
using testing::DriverQueue;
using testing::DriverPackedLayout;
using testing::DriverPackedQueue;
using testing::DriverQueueLayout;

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kImageSize = kMiB;
// Guest RAM of the test front-end: rings in the low region, request buffers in the high one,
// so ring and buffer addresses are translated through different table entries.
constexpr uint64_t kLowSize = 4 * kMiB;
constexpr uint64_t kHighGpa = 1ull << 30;
constexpr uint64_t kHighSize = 4 * kMiB;
constexpr uint16_t kRingSize = 256;
constexpr int kWaitMs = 10000;

size_t open_fds() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

class TempImage {
 public:
  TempImage() {
    char tmpl[] = "/var/tmp/iovirt-vub-XXXXXX";
    const int fd = ::mkstemp(tmpl);
    EXPECT_GE(fd, 0);
    path_ = tmpl;
    EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(kImageSize)), 0);
    ::close(fd);
  }
  ~TempImage() { std::filesystem::remove(path_); }
  TempImage(const TempImage&) = delete;
  TempImage& operator=(const TempImage&) = delete;
  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] std::vector<uint8_t> read(uint64_t off, size_t len) const {
    std::vector<uint8_t> out(len);
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_EQ(::pread(fd, out.data(), len, static_cast<off_t>(off)), static_cast<ssize_t>(len));
    ::close(fd);
    return out;
  }
  void write(uint64_t off, const std::vector<uint8_t>& data) const {
    const int fd = ::open(path_.c_str(), O_WRONLY | O_CLOEXEC);
    EXPECT_EQ(::pwrite(fd, data.data(), data.size(), static_cast<off_t>(off)),
              static_cast<ssize_t>(data.size()));
    ::close(fd);
  }

 private:
  std::string path_;
};

std::vector<uint8_t> pattern(size_t len, uint8_t seed) {
  std::vector<uint8_t> v(len);
  for (size_t i = 0; i < len; ++i) v[i] = static_cast<uint8_t>(seed + i * 13 + (i >> 8));
  return v;
}

Fd new_eventfd() {
  return Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
}

// Waits until fd is readable; drains it. False on timeout.
bool wait_readable(int fd, int ms = kWaitMs) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, ms) != 1) return false;
  uint64_t v = 0;
  (void)::read(fd, &v, sizeof v);
  return true;
}

// The test front-end: guest memory, the socket and the serve() thread on the other end.
class Frontend {
 public:
  explicit Frontend(VhostUserBackend& backend) {
    const RegionSpec specs[] = {{0, kLowSize}, {kHighGpa, kHighSize}};
    auto m = GuestMemory::create(specs);
    EXPECT_TRUE(m.has_value()) << m.error().message();
    mem.emplace(std::move(*m));
    auto p = Connection::pair();
    EXPECT_TRUE(p.has_value());
    conn.emplace(std::move(p->first));
    thread = std::thread([this, &backend, c = std::move(p->second)]() mutable {
      result = backend.serve(std::move(c));
      done.store(true);
    });
  }
  ~Frontend() { finish(); }
  Frontend(const Frontend&) = delete;
  Frontend& operator=(const Frontend&) = delete;

  // Closes our end and joins serve(); returns its result.
  Status finish() {
    conn.reset();
    if (thread.joinable()) thread.join();
    return result;
  }
  // serve() returned by itself (the backend closed the connection); joins it.
  bool closed_by_backend() {
    for (int i = 0; i < kWaitMs / 10 && !done.load(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!done.load()) return false;
    thread.join();
    return true;
  }

  [[nodiscard]] uint64_t uaddr(uint64_t gpa) const {
    const GuestRegion* r = mem->find_region(gpa);
    EXPECT_NE(r, nullptr);
    return reinterpret_cast<uint64_t>(r->host) + (gpa - r->gpa);
  }

  void send(const Message& m) {
    auto st = conn->send(m);
    ASSERT_TRUE(st.has_value()) << st.error().message();
  }
  Message reply(Request expected) {
    auto r = conn->receive(Role::Frontend, Limits{8, 8});
    EXPECT_TRUE(r.has_value()) << r.error().message();
    if (!r || !r->has_value()) return Message{};
    EXPECT_EQ((*r)->request, expected);
    return std::move(**r);
  }
  uint64_t get_u64(Request r) {
    send(make_request(r));
    Message m = reply(r);
    auto* v = std::get_if<U64>(&m.body);
    EXPECT_NE(v, nullptr);
    return v != nullptr ? v->value : 0;
  }
  // A request with NEED_REPLY: returns the ack (0 = success).
  uint64_t acked(Request r, Body body) {
    send(make_request(r, std::move(body), true));
    Message m = reply(r);
    auto* v = std::get_if<U64>(&m.body);
    return v != nullptr ? v->value : ~0ull;
  }

  MemTable mem_table() const {
    MemTable t;
    for (const GuestRegion& r : mem->regions()) {
      t.regions.push_back(MemRegion{r.gpa, r.size, reinterpret_cast<uint64_t>(r.host), 0});
      t.fds.emplace_back(::dup(r.fd));
    }
    return t;
  }

  std::optional<GuestMemory> mem;
  std::optional<Connection> conn;
  std::thread thread;
  Status result;
  std::atomic<bool> done{false};
};

struct Ring {
  DriverQueueLayout layout;
  std::optional<DriverQueue> drv;
  Fd kick = new_eventfd();
  Fd call = new_eventfd();
};

DriverQueueLayout layout_for(uint16_t q) {
  const uint64_t base = 0x10000ull * (q + 1);
  return DriverQueueLayout{kRingSize, base, base + 0x4000, base + 0x8000};
}

class VhostUserBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    BlkConfig cfg;
    cfg.path = image.path();
    cfg.queues = 2;
    cfg.queue_size = kRingSize;
    auto d = VirtioBlk::create(cfg, metrics, "blk0");
    ASSERT_TRUE(d.has_value()) << d.error().message();
    dev = std::move(*d);
    auto b = VhostUserBackend::create(*dev, metrics);
    ASSERT_TRUE(b.has_value()) << b.error().message();
    backend = std::move(*b);
  }

  // The negotiation part of QEMU's sequence; returns the acked features.
  uint64_t negotiate(Frontend& f, uint64_t extra = 0, bool event_idx = true) {
    const uint64_t offered = f.get_u64(Request::GetFeatures);
    EXPECT_NE(offered & (1ull << kFeatureProtocolFeatures), 0u);
    EXPECT_NE(offered & feature_bit(VIRTIO_F_VERSION_1), 0u);
    EXPECT_NE(offered & feature_bit(VIRTIO_F_RING_PACKED), 0u);
    const uint64_t proto = f.get_u64(Request::GetProtocolFeatures);
    EXPECT_NE(proto & (1ull << protocol_feature::kReplyAck), 0u);
    EXPECT_NE(proto & (1ull << protocol_feature::kMq), 0u);
    f.send(make_request(Request::SetProtocolFeatures, U64{proto}));
    EXPECT_EQ(f.get_u64(Request::GetQueueNum), 2u);
    f.send(make_request(Request::SetOwner));
    const uint64_t want = offered & (feature_bit(VIRTIO_F_VERSION_1) | extra |
                                     (event_idx ? feature_bit(VIRTIO_F_EVENT_IDX) : 0) |
                                     feature_bit(VIRTIO_F_INDIRECT_DESC) |
                                     feature_bit(blk::VIRTIO_BLK_F_FLUSH) |
                                     (1ull << kFeatureProtocolFeatures));
    EXPECT_EQ(f.acked(Request::SetFeatures, U64{want}), 0u);
    EXPECT_EQ(f.acked(Request::SetMemTable, f.mem_table()), 0u);
    return want;
  }

  // SET_VRING_NUM/BASE/ADDR/KICK/CALL then ENABLE (acked, so the device runs on return).
  void start_ring(Frontend& f, uint16_t q, Ring& r, uint16_t base = 0) {
    r.layout = layout_for(q);
    if (!r.drv) {
      auto d = DriverQueue::create(*f.mem, r.layout);
      ASSERT_TRUE(d.has_value()) << d.error().message();
      r.drv.emplace(std::move(*d));
    }
    f.send(make_request(Request::SetVringNum, VringState{q, kRingSize}));
    f.send(make_request(Request::SetVringBase, VringState{q, base}));
    f.send(make_request(Request::SetVringAddr,
                        VringAddr{q, 0, f.uaddr(r.layout.desc_gpa), f.uaddr(r.layout.used_gpa),
                                  f.uaddr(r.layout.avail_gpa), 0}));
    f.send(make_request(Request::SetVringKick, VringFd{q, Fd(::dup(r.kick.get()))}));
    f.send(make_request(Request::SetVringCall, VringFd{q, Fd(::dup(r.call.get()))}));
    ASSERT_EQ(f.acked(Request::SetVringEnable, VringState{q, 1}), 0u);
  }

  // One request: header, data, status; returns {status, used len} once the call fd fired.
  std::pair<uint8_t, uint32_t> request(Frontend& f, Ring& r, uint32_t type, uint64_t sector,
                                       uint64_t data_gpa, uint32_t len) {
    const uint64_t hdr = kHighGpa + 3 * kMiB + next_slot * 64;
    const uint64_t status = hdr + 32;
    ++next_slot;
    EXPECT_TRUE(f.mem->write_obj(hdr, BlkReqHeader{type, 0, sector}).has_value());
    EXPECT_TRUE(f.mem->write_obj<uint8_t>(status, 0xee).has_value());
    std::vector<Buf> bufs{{hdr, 16, false}};
    if (len > 0) bufs.push_back({data_gpa, len, type == blk::VIRTIO_BLK_T_IN});
    bufs.push_back({status, 1, true});
    auto head = r.drv->add_chain(bufs);
    EXPECT_TRUE(head.has_value());
    // EVENT_IDX: ask for an interrupt at the next used entry, as a driver re-enabling callbacks.
    auto used_idx = r.drv->used_idx();
    EXPECT_TRUE(used_idx.has_value());
    EXPECT_TRUE(r.drv->set_used_event(used_idx.value_or(0)).has_value());
    const uint64_t one = 1;
    EXPECT_EQ(::write(r.kick.get(), &one, sizeof one), 8);
    std::optional<VirtqUsedElem> used;
    for (int i = 0; i < 3 && !used; ++i) {
      if (!wait_readable(r.call.get())) break;
      auto u = r.drv->take_used();
      EXPECT_TRUE(u.has_value());
      if (u && *u) used = **u;
    }
    if (!used) {
      ADD_FAILURE() << "no used buffer and no call after " << kWaitMs << " ms";
      return {0xff, 0};
    }
    EXPECT_EQ(used->id, *head);
    return {*f.mem->read_obj<uint8_t>(status), used->len};
  }

  TempImage image;
  MetricsRegistry metrics;
  std::unique_ptr<VirtioBlk> dev;
  std::unique_ptr<VhostUserBackend> backend;
  uint32_t next_slot = 0;
};

// --- the real message sequence ----------------------------------------------------------------

TEST_F(VhostUserBackendTest, FrontendWritesAndReadsTheImageThroughSharedRings) {
  Frontend f(*backend);
  negotiate(f);
  // Configuration space (CONFIG protocol feature): capacity in sectors.
  f.send(make_request(Request::GetConfig, Config{0, 0, std::vector<uint8_t>(60)}));
  Message cfg = f.reply(Request::GetConfig);
  const auto& data = std::get<Config>(cfg.body).data;
  ASSERT_EQ(data.size(), 60u);
  uint64_t capacity = 0;
  std::memcpy(&capacity, data.data(), sizeof capacity);
  EXPECT_EQ(capacity, kImageSize / 512);

  Ring r0;
  start_ring(f, 0, r0);
  const auto payload = pattern(8192, 3);
  ASSERT_TRUE(f.mem->write(kHighGpa, payload).has_value());
  auto [st_w, len_w] = request(f, r0, blk::VIRTIO_BLK_T_OUT, 16, kHighGpa, 8192);
  EXPECT_EQ(st_w, blk::VIRTIO_BLK_S_OK);
  EXPECT_EQ(len_w, 1u);
  EXPECT_EQ(image.read(16 * 512, 8192), payload);

  // Read back something the test put in the file directly, into another buffer.
  const auto on_disk = pattern(4096, 77);
  image.write(64 * 512, on_disk);
  const uint64_t rbuf = kHighGpa + kMiB;
  auto [st_r, len_r] = request(f, r0, blk::VIRTIO_BLK_T_IN, 64, rbuf, 4096);
  EXPECT_EQ(st_r, blk::VIRTIO_BLK_S_OK);
  EXPECT_EQ(len_r, 4097u);
  std::vector<uint8_t> got(4096);
  ASSERT_TRUE(f.mem->read(rbuf, got).has_value());
  EXPECT_EQ(got, on_disk);

  // GET_VRING_BASE stops the ring and reports the next available index.
  f.send(make_request(Request::GetVringBase, VringState{0, 0}));
  Message base = f.reply(Request::GetVringBase);
  EXPECT_EQ(std::get<VringState>(base.body).index, 0u);
  EXPECT_EQ(std::get<VringState>(base.body).num, 2u);

  EXPECT_TRUE(f.finish().has_value());
}

TEST_F(VhostUserBackendTest, StoppedRingResumesFromItsBaseWithANewKickFd) {
  Frontend f(*backend);
  negotiate(f);
  Ring r0;
  start_ring(f, 0, r0);
  ASSERT_TRUE(f.mem->write(kHighGpa, pattern(512, 1)).has_value());
  EXPECT_EQ(request(f, r0, blk::VIRTIO_BLK_T_OUT, 0, kHighGpa, 512).first, blk::VIRTIO_BLK_S_OK);

  // QEMU's vhost_dev_stop order: disable, then GET_VRING_BASE. (Without the disable, the ring
  // would start again at SET_VRING_KICK, before the new call fd arrives.)
  ASSERT_EQ(f.acked(Request::SetVringEnable, VringState{0, 0}), 0u);
  f.send(make_request(Request::GetVringBase, VringState{0, 0}));
  const uint32_t base = std::get<VringState>(f.reply(Request::GetVringBase).body).num;
  ASSERT_EQ(base, 1u);
  // While stopped, a request published and kicked on the old fd is not served...
  ASSERT_TRUE(f.mem->write(kHighGpa + 4096, pattern(512, 9)).has_value());
  const uint64_t hdr = kHighGpa + 3 * kMiB + 4096;
  ASSERT_TRUE(f.mem->write_obj(hdr, BlkReqHeader{blk::VIRTIO_BLK_T_OUT, 0, 1}).has_value());
  ASSERT_TRUE(f.mem->write_obj<uint8_t>(hdr + 32, 0xee).has_value());
  const Buf bufs[] = {{hdr, 16, false}, {kHighGpa + 4096, 512, false}, {hdr + 32, 1, true}};
  auto head = r0.drv->add_chain(bufs);
  ASSERT_TRUE(head.has_value());
  ASSERT_TRUE(r0.drv->set_used_event(1).has_value());
  const uint64_t one = 1;
  ASSERT_EQ(::write(r0.kick.get(), &one, sizeof one), 8);
  EXPECT_FALSE(wait_readable(r0.call.get(), 200)) << "a stopped ring was served";
  EXPECT_EQ(image.read(512, 512), std::vector<uint8_t>(512, 0));
  // ...and is served from the base once the ring is started again with a new kick fd.
  Ring fresh;  // new kick/call fds; the driver-side ring state carries on
  fresh.drv.emplace(std::move(*r0.drv));
  start_ring(f, 0, fresh, static_cast<uint16_t>(base));
  ASSERT_EQ(::write(fresh.kick.get(), &one, sizeof one), 8);
  ASSERT_TRUE(wait_readable(fresh.call.get()));
  auto used = fresh.drv->take_used();
  ASSERT_TRUE(used.has_value() && used->has_value());
  EXPECT_EQ((*used)->id, *head) << "the restarted ring did not resume at its base";
  EXPECT_EQ(*f.mem->read_obj<uint8_t>(hdr + 32), blk::VIRTIO_BLK_S_OK);
  f.send(make_request(Request::GetVringBase, VringState{0, 0}));
  EXPECT_EQ(std::get<VringState>(f.reply(Request::GetVringBase).body).num, 2u);
  auto none = fresh.drv->take_used();
  ASSERT_TRUE(none.has_value());
  EXPECT_FALSE(none->has_value()) << "a request was served twice";
  EXPECT_EQ(image.read(512, 512), pattern(512, 9));
  EXPECT_TRUE(f.finish().has_value());
}

// INFLIGHT_SHMFD: a predecessor popped A, B and C, completed only B (out of order, as io_uring
// does) and died. Given its inflight area, this back-end resubmits A and C, never B, and the
// ring goes on after them.
TEST_F(VhostUserBackendTest, InflightAreaOfADeadBackendIsResubmittedNotReplayed) {
  Frontend f(*backend);
  negotiate(f);
  f.send(make_request(Request::GetInflightFd, Inflight{InflightWire{0, 0, 2, kRingSize, 0}, Fd()}));
  Message m = f.reply(Request::GetInflightFd);
  auto* in = std::get_if<Inflight>(&m.body);
  ASSERT_NE(in, nullptr);
  ASSERT_TRUE(in->fd.valid());
  const size_t stride = inflight_split_queue_bytes(kRingSize);
  ASSERT_EQ(in->info.mmap_size, 2 * stride);
  void* p = ::mmap(nullptr, in->info.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, in->fd.get(), 0);
  ASSERT_NE(p, MAP_FAILED);
  auto* hdr = static_cast<InflightSplitHeader*>(p);
  auto* desc = reinterpret_cast<InflightDescSplit*>(static_cast<uint8_t*>(p) + sizeof *hdr);

  // The guest queued three writes; the dead back-end's marks and its one used element (B).
  Ring r0;
  r0.layout = layout_for(0);
  auto d = DriverQueue::create(*f.mem, r0.layout);
  ASSERT_TRUE(d.has_value());
  r0.drv.emplace(std::move(*d));
  uint16_t heads[3];
  for (uint16_t i = 0; i < 3; ++i) {
    const uint64_t data = kHighGpa + i * 4096;
    const uint64_t h = kHighGpa + 3 * kMiB + i * 64;
    ASSERT_TRUE(f.mem->write(data, pattern(512, static_cast<uint8_t>(i + 1))).has_value());
    ASSERT_TRUE(f.mem->write_obj(h, BlkReqHeader{blk::VIRTIO_BLK_T_OUT, 0, i}).has_value());
    const Buf bufs[] = {{h, 16, false}, {data, 512, false}, {h + 32, 1, true}};
    auto head = r0.drv->add_chain(bufs);
    ASSERT_TRUE(head.has_value());
    heads[i] = *head;
  }
  ASSERT_TRUE(f.mem->write_obj(r0.layout.used_gpa + 4, VirtqUsedElem{heads[1], 1}).has_value());
  ASSERT_TRUE(f.mem->write_obj<uint16_t>(r0.layout.used_gpa + 2, 1).has_value());
  hdr->version = kInflightVersion;
  hdr->desc_num = kRingSize;
  hdr->used_idx = 1;
  desc[heads[0]] = InflightDescSplit{1, {}, 0, 10};
  desc[heads[2]] = InflightDescSplit{1, {}, 0, 12};

  Inflight set{in->info, Fd(::dup(in->fd.get()))};
  EXPECT_EQ(f.acked(Request::SetInflightFd, std::move(set)), 0u);
  start_ring(f, 0, r0, 1);  // QEMU's base after a back-end crash: the used idx
  const uint64_t one = 1;
  ASSERT_EQ(::write(r0.kick.get(), &one, sizeof one), 8);
  std::vector<uint32_t> done;
  (void)r0.drv->take_used();  // B, published by the dead back-end
  for (int i = 0; i < 20 && done.size() < 2; ++i) {
    wait_readable(r0.call.get(), 500);
    for (;;) {
      auto u = r0.drv->take_used();
      if (!u || !*u) break;
      done.push_back((*u)->id);
    }
  }
  std::sort(done.begin(), done.end());
  std::vector<uint32_t> want{heads[0], heads[2]};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(done, want);
  EXPECT_EQ(image.read(0, 512), pattern(512, 1));
  EXPECT_EQ(image.read(512, 512), std::vector<uint8_t>(512, 0)) << "B, already completed, was replayed";
  EXPECT_EQ(image.read(1024, 512), pattern(512, 3));
  EXPECT_EQ(desc[heads[0]].inflight + desc[heads[2]].inflight, 0);
  // The ring continues after the three.
  ASSERT_TRUE(f.mem->write(kHighGpa + 5 * 4096, pattern(512, 9)).has_value());
  EXPECT_EQ(request(f, r0, blk::VIRTIO_BLK_T_OUT, 3, kHighGpa + 5 * 4096, 512).first,
            blk::VIRTIO_BLK_S_OK);
  EXPECT_EQ(image.read(3 * 512, 512), pattern(512, 9));
  f.send(make_request(Request::GetVringBase, VringState{0, 0}));
  EXPECT_EQ(std::get<VringState>(f.reply(Request::GetVringBase).body).num, 4u);
  ::munmap(p, in->info.mmap_size);
  EXPECT_TRUE(f.finish().has_value());
}

TEST_F(VhostUserBackendTest, PackedRingIsServedAndResumesFromItsWrapState) {
  Frontend f(*backend);
  negotiate(f, feature_bit(VIRTIO_F_RING_PACKED), /*event_idx=*/false);
  const DriverPackedLayout lay{kRingSize, 0x10000, 0x14000, 0x18000};
  auto drv = DriverPackedQueue::create(*f.mem, lay);
  ASSERT_TRUE(drv.has_value()) << drv.error().message();
  // vhost-user names the packed areas after the split ones: avail = driver event suppression,
  // used = device event suppression.
  auto start = [&](uint32_t base, Ring& r) {
    f.send(make_request(Request::SetVringNum, VringState{0, kRingSize}));
    f.send(make_request(Request::SetVringBase, VringState{0, base}));
    f.send(make_request(Request::SetVringAddr,
                        VringAddr{0, 0, f.uaddr(lay.desc_gpa), f.uaddr(lay.device_gpa),
                                  f.uaddr(lay.driver_gpa), 0}));
    f.send(make_request(Request::SetVringKick, VringFd{0, Fd(::dup(r.kick.get()))}));
    f.send(make_request(Request::SetVringCall, VringFd{0, Fd(::dup(r.call.get()))}));
    ASSERT_EQ(f.acked(Request::SetVringEnable, VringState{0, 1}), 0u);
  };
  auto stop = [&] {
    EXPECT_EQ(f.acked(Request::SetVringEnable, VringState{0, 0}), 0u);
    f.send(make_request(Request::GetVringBase, VringState{0, 0}));
    return std::get<VringState>(f.reply(Request::GetVringBase).body).num;
  };
  auto write_req = [&](Ring& r, uint64_t sector, uint8_t seed) {
    const uint64_t hdr = kHighGpa + 3 * kMiB + sector * 64;
    const uint64_t data = kHighGpa + sector * 4096;
    ASSERT_TRUE(f.mem->write_obj(hdr, BlkReqHeader{blk::VIRTIO_BLK_T_OUT, 0, sector}).has_value());
    ASSERT_TRUE(f.mem->write_obj<uint8_t>(hdr + 32, 0xee).has_value());
    ASSERT_TRUE(f.mem->write(data, pattern(512, seed)).has_value());
    const Buf bufs[] = {{hdr, 16, false}, {data, 512, false}, {hdr + 32, 1, true}};
    auto id = drv->add_chain(bufs);
    ASSERT_TRUE(id.has_value());
    const uint64_t one = 1;
    ASSERT_EQ(::write(r.kick.get(), &one, sizeof one), 8);
    ASSERT_TRUE(wait_readable(r.call.get())) << "no call for the packed request";
    auto used = drv->take_used();
    ASSERT_TRUE(used.has_value() && used->has_value());
    EXPECT_EQ((*used)->id, *id);
    EXPECT_EQ(*f.mem->read_obj<uint8_t>(hdr + 32), blk::VIRTIO_BLK_S_OK);
    EXPECT_EQ(image.read(sector * 512, 512), pattern(512, seed));
  };
  Ring r0;
  // Position 0, wrap counter 1: a fresh packed ring, in QEMU 7.2's form (the used state in the
  // high half: avail | used << 16), which a 16-bit check once refused.
  start(0x80008000u, r0);
  write_req(r0, 1, 11);
  EXPECT_EQ(stop(), 0x8003u) << "three descriptors consumed, wrap counter still 1";
  Ring r1;
  start(0x8003, r1);
  write_req(r1, 2, 22);
  EXPECT_EQ(stop(), 0x8006u);
  EXPECT_TRUE(f.finish().has_value());
}

TEST_F(VhostUserBackendTest, TwoQueuesAreServedIndependently) {
  Frontend f(*backend);
  negotiate(f);
  Ring r0;
  Ring r1;
  start_ring(f, 0, r0);
  start_ring(f, 1, r1);  // re-activates the device with both rings; queue 0 keeps its state
  ASSERT_TRUE(f.mem->write(kHighGpa, pattern(1024, 5)).has_value());
  ASSERT_TRUE(f.mem->write(kHighGpa + 8192, pattern(1024, 6)).has_value());
  EXPECT_EQ(request(f, r1, blk::VIRTIO_BLK_T_OUT, 100, kHighGpa + 8192, 1024).first,
            blk::VIRTIO_BLK_S_OK);
  EXPECT_EQ(request(f, r0, blk::VIRTIO_BLK_T_OUT, 200, kHighGpa, 1024).first,
            blk::VIRTIO_BLK_S_OK);
  EXPECT_EQ(image.read(100 * 512, 1024), pattern(1024, 6));
  EXPECT_EQ(image.read(200 * 512, 1024), pattern(1024, 5));
  EXPECT_TRUE(f.finish().has_value());
}

// QEMU's multi-queue sequence: one vhost device per queue pair on the same connection, each
// sending SET_FEATURES (the same bits) before its rings, while the first pair's rings run.
TEST_F(VhostUserBackendTest, SetFeaturesRepeatedPerQueuePairKeepsRunningRingsServed) {
  Frontend f(*backend);
  const uint64_t acked = negotiate(f);
  Ring r0;
  Ring r1;
  start_ring(f, 0, r0);
  ASSERT_TRUE(f.mem->write(kHighGpa, pattern(1024, 7)).has_value());
  EXPECT_EQ(request(f, r0, blk::VIRTIO_BLK_T_OUT, 300, kHighGpa, 1024).first,
            blk::VIRTIO_BLK_S_OK);
  EXPECT_EQ(f.acked(Request::SetFeatures, U64{acked}), 0u);
  start_ring(f, 1, r1);
  EXPECT_EQ(request(f, r0, blk::VIRTIO_BLK_T_IN, 300, kHighGpa + 8192, 1024).first,
            blk::VIRTIO_BLK_S_OK);
  std::vector<uint8_t> got(1024);
  ASSERT_TRUE(f.mem->read(kHighGpa + 8192, got).has_value());
  EXPECT_EQ(got, pattern(1024, 7));
  EXPECT_EQ(request(f, r1, blk::VIRTIO_BLK_T_FLUSH, 0, 0, 0).first, blk::VIRTIO_BLK_S_OK);
  EXPECT_TRUE(f.finish().has_value());
}

TEST_F(VhostUserBackendTest, DisabledRingIsNotServedUntilEnabled) {
  Frontend f(*backend);
  negotiate(f);  // PROTOCOL_FEATURES acked: rings start disabled
  Ring r0;
  r0.layout = layout_for(0);
  auto d = DriverQueue::create(*f.mem, r0.layout);
  ASSERT_TRUE(d.has_value());
  r0.drv.emplace(std::move(*d));
  f.send(make_request(Request::SetVringNum, VringState{0, kRingSize}));
  f.send(make_request(Request::SetVringAddr,
                      VringAddr{0, 0, f.uaddr(r0.layout.desc_gpa), f.uaddr(r0.layout.used_gpa),
                                f.uaddr(r0.layout.avail_gpa), 0}));
  f.send(make_request(Request::SetVringCall, VringFd{0, Fd(::dup(r0.call.get()))}));
  ASSERT_EQ(f.acked(Request::SetVringKick, VringFd{0, Fd(::dup(r0.kick.get()))}), 0u);
  ASSERT_TRUE(f.mem->write_obj(kHighGpa + 3 * kMiB, BlkReqHeader{blk::VIRTIO_BLK_T_FLUSH, 0, 0})
                  .has_value());
  const Buf bufs[] = {{kHighGpa + 3 * kMiB, 16, false}, {kHighGpa + 3 * kMiB + 32, 1, true}};
  ASSERT_TRUE(r0.drv->add_chain(bufs).has_value());
  const uint64_t one = 1;
  ASSERT_EQ(::write(r0.kick.get(), &one, sizeof one), 8);
  EXPECT_FALSE(wait_readable(r0.call.get(), 200)) << "a disabled ring was served";
  ASSERT_EQ(f.acked(Request::SetVringEnable, VringState{0, 1}), 0u);
  EXPECT_TRUE(wait_readable(r0.call.get())) << "enabling did not serve the pending request";
  EXPECT_TRUE(f.finish().has_value());
}

TEST_F(VhostUserBackendTest, DisconnectUnmapsMemoryAndClosesEveryReceivedFd) {
  const size_t before = open_fds();
  {
    Frontend f(*backend);
    negotiate(f);
    Ring r0;
    start_ring(f, 0, r0);
    EXPECT_TRUE(f.finish().has_value());
  }
  EXPECT_EQ(open_fds(), before);
  // The same backend serves the next front-end from a clean state.
  Frontend g(*backend);
  negotiate(g);
  Ring r0;
  start_ring(g, 0, r0);
  ASSERT_TRUE(g.mem->write(kHighGpa, pattern(512, 2)).has_value());
  EXPECT_EQ(request(g, r0, blk::VIRTIO_BLK_T_OUT, 3, kHighGpa, 512).first, blk::VIRTIO_BLK_S_OK);
  EXPECT_TRUE(g.finish().has_value());
}

TEST_F(VhostUserBackendTest, BrokenRingFailsTheDeviceAndClosesTheConnection) {
  Frontend f(*backend);
  negotiate(f);
  Ring r0;
  start_ring(f, 0, r0);
  Fd err = new_eventfd();
  ASSERT_EQ(f.acked(Request::SetVringErr, VringFd{0, Fd(::dup(err.get()))}), 0u);
  // The guest publishes a head index beyond the ring: the device fails (QueueFault).
  ASSERT_TRUE(r0.drv->publish_head(kRingSize + 5).has_value());
  const uint64_t one = 1;
  ASSERT_EQ(::write(r0.kick.get(), &one, sizeof one), 8);
  ASSERT_TRUE(f.closed_by_backend());
  ASSERT_FALSE(f.result.has_value());
  EXPECT_NE(f.result.error().message().find("queue 0"), std::string::npos)
      << f.result.error().message();
  EXPECT_TRUE(wait_readable(err.get(), 0)) << "the ERR eventfd was not signalled";
}

// --- hostile peers ----------------------------------------------------------------------------

class HostileTest : public VhostUserBackendTest {
 protected:
  // Expects the backend to have closed the connection with a reason containing `what`.
  static void expect_closed(Frontend& f, const std::string& what) {
    ASSERT_TRUE(f.closed_by_backend()) << "the backend kept the connection";
    ASSERT_FALSE(f.result.has_value()) << "closed without a reason";
    EXPECT_NE(f.result.error().message().find(what), std::string::npos)
        << f.result.error().message();
    // Our end sees the close: EOF (or a reset), never a reply.
    auto r = f.conn->recv();
    EXPECT_TRUE(!r || !r->has_value());
  }

  static std::vector<uint8_t> raw(Request r, std::span<const uint8_t> payload,
                                  uint32_t size_field) {
    std::vector<uint8_t> b(sizeof(Header) + payload.size());
    const Header h{static_cast<uint32_t>(r), kVersion, size_field};
    std::memcpy(b.data(), &h, sizeof h);
    if (!payload.empty()) std::memcpy(b.data() + sizeof h, payload.data(), payload.size());
    return b;
  }
};

TEST_F(HostileTest, TruncatedMessage) {
  Frontend f(*backend);
  const uint8_t half[4] = {1, 2, 3, 4};
  auto bytes = raw(Request::SetFeatures, half, 8);  // promises 8 payload bytes, sends 4
  ASSERT_TRUE(f.conn->send_raw(bytes, {}).has_value());
  ::shutdown(f.conn->fd(), SHUT_WR);
  expect_closed(f, "inside a message");
}

TEST_F(HostileTest, WrongPayloadSize) {
  Frontend f(*backend);
  const uint8_t four[4] = {};
  ASSERT_TRUE(f.conn->send_raw(raw(Request::SetFeatures, four, 4), {}).has_value());
  expect_closed(f, "payload size 4, expected 8");
}

TEST_F(HostileTest, TooManyRegions) {
  Frontend f(*backend);
  std::vector<uint8_t> p(8 + 9 * 32, 0);
  p[0] = 9;
  ASSERT_TRUE(f.conn->send_raw(raw(Request::SetMemTable, p, static_cast<uint32_t>(p.size())), {})
                  .has_value());
  expect_closed(f, "nregions 9");
}

TEST_F(HostileTest, MemTableFdMissing) {
  Frontend f(*backend);
  const Message m = make_request(Request::SetMemTable, f.mem_table());  // owns the fds
  auto e = encode(m);
  ASSERT_TRUE(e.has_value());
  const int one_fd[1] = {e->fds[0]};  // two regions, one fd
  ASSERT_TRUE(f.conn->send_raw(e->bytes, one_fd).has_value());
  expect_closed(f, "1 file descriptors attached for 2 regions");
}

TEST_F(HostileTest, ExtraFdOnAMessageWithoutFds) {
  Frontend f(*backend);
  Fd extra = new_eventfd();
  const uint64_t v = 0;
  const int fds[1] = {extra.get()};
  ASSERT_TRUE(f.conn->send_raw(raw(Request::SetFeatures,
                                   std::span(reinterpret_cast<const uint8_t*>(&v), 8), 8),
                               fds)
                  .has_value());
  expect_closed(f, "1 file descriptors attached, expected 0");
}

TEST_F(HostileTest, OverlappingRegions) {
  Frontend f(*backend);
  MemTable t = f.mem_table();
  t.regions[1].guest_phys_addr = kLowSize - 4096;  // overlaps the low region's last page
  f.send(make_request(Request::SetMemTable, std::move(t)));
  expect_closed(f, "overlaps");
}

TEST_F(HostileTest, RegionLargerThanItsFile) {
  Frontend f(*backend);
  MemTable t = f.mem_table();
  t.regions[0].memory_size = 2 * kLowSize;  // the memfd holds only kLowSize bytes
  f.send(make_request(Request::SetMemTable, std::move(t)));
  expect_closed(f, "shorter than mmap_offset");
}

// SET_INFLIGHT_FD: an area too small for the queues it claims, a file shorter than it, an
// unaligned offset, more queues than the device has: each closes the connection with a reason.
TEST_F(HostileTest, InflightAreaThatDoesNotHoldWhatItClaims) {
  struct Case {
    InflightWire w;
    off_t file_size;
    const char* why;
  };
  const uint64_t one = inflight_split_queue_bytes(kRingSize);
  const Case cases[] = {
      {{one, 0, 2, kRingSize, 0}, static_cast<off_t>(2 * one), "does not hold 2 queue(s)"},
      {{2 * one, 0, 2, kRingSize, 0}, static_cast<off_t>(one), "smaller than offset + size"},
      {{one, 100, 1, kRingSize, 0}, static_cast<off_t>(2 * one), "not page aligned"},
      {{8 * one, 0, 8, kRingSize, 0}, static_cast<off_t>(8 * one), "num_queues 8 out of range 1..2"},
  };
  for (const Case& c : cases) {
    Frontend f(*backend);
    negotiate(f);
    Fd fd(::memfd_create("hostile-inflight", MFD_CLOEXEC));
    ASSERT_TRUE(fd.valid());
    ASSERT_EQ(::ftruncate(fd.get(), c.file_size), 0);
    f.send(make_request(Request::SetInflightFd, Inflight{c.w, std::move(fd)}));
    expect_closed(f, c.why);
  }
}

TEST_F(HostileTest, RingAddressOutsideSharedMemory) {
  Frontend f(*backend);
  negotiate(f);
  f.send(make_request(Request::SetVringNum, VringState{0, kRingSize}));
  const uint64_t nowhere = f.uaddr(0) + 64 * kMiB;  // not in the table
  f.send(make_request(Request::SetVringAddr,
                      VringAddr{0, 0, nowhere, f.uaddr(0x8000), f.uaddr(0x4000), 0}));
  expect_closed(f, "desc_user_addr");
}

TEST_F(HostileTest, RingStraddlingTheEndOfARegion) {
  Frontend f(*backend);
  negotiate(f);
  Ring r0;
  f.send(make_request(Request::SetVringNum, VringState{0, kRingSize}));
  // The descriptor table starts inside the low region and runs 4 KiB past its end.
  f.send(make_request(Request::SetVringAddr, VringAddr{0, 0, f.uaddr(kLowSize - 4096 + 16),
                                                        f.uaddr(0x8000), f.uaddr(0x4000), 0}));
  f.send(make_request(Request::SetVringKick, VringFd{0, Fd(::dup(r0.kick.get()))}));
  f.send(make_request(Request::SetVringEnable, VringState{0, 1}));
  expect_closed(f, "vring 0");
}

// Only a packed ring's base has a high half (QEMU's used state).
TEST_F(HostileTest, SplitVringBaseAbove16Bits) {
  Frontend f(*backend);
  negotiate(f);
  f.send(make_request(Request::SetVringBase, VringState{0, 0x10000}));
  expect_closed(f, "above 0xffff for a split ring");
}

TEST_F(HostileTest, GetVringBaseOnAnUnknownIndex) {
  Frontend f(*backend);
  f.send(make_request(Request::GetVringBase, VringState{5, 0}));
  expect_closed(f, "vring index 5 out of range");
}

TEST_F(HostileTest, VringNumNotAPowerOfTwo) {
  Frontend f(*backend);
  f.send(make_request(Request::SetVringNum, VringState{0, 100}));
  expect_closed(f, "not a power of two");
}

TEST_F(HostileTest, VringNumAboveTheDeviceMaximum) {
  Frontend f(*backend);
  f.send(make_request(Request::SetVringNum, VringState{0, 2 * kRingSize}));
  expect_closed(f, "above the device maximum");
}

TEST_F(HostileTest, KickFdThatIsNotAnEventfd) {
  Frontend f(*backend);
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  Fd rd(p[0]);
  Fd wr(p[1]);
  f.send(make_request(Request::SetVringKick, VringFd{0, Fd(::dup(rd.get()))}));
  expect_closed(f, "not an eventfd");
}

TEST_F(HostileTest, FeaturesThatWereNotOffered) {
  Frontend f(*backend);
  f.send(make_request(Request::SetFeatures, U64{feature_bit(VIRTIO_F_ACCESS_PLATFORM) |
                                                feature_bit(VIRTIO_F_VERSION_1)}));
  expect_closed(f, "were not offered");
}

TEST_F(HostileTest, RingStartedBeforeTheMemoryTable) {
  Frontend f(*backend);
  Ring r0;
  f.send(make_request(Request::SetFeatures, U64{feature_bit(VIRTIO_F_VERSION_1)}));
  f.send(make_request(Request::SetVringNum, VringState{0, kRingSize}));
  f.send(make_request(Request::SetVringKick, VringFd{0, Fd(::dup(r0.kick.get()))}));
  expect_closed(f, "before SET_MEM_TABLE");
}

TEST_F(HostileTest, NackedBeforeTheConnectionCloses) {
  Frontend f(*backend);
  f.send(make_request(Request::SetProtocolFeatures,
                      U64{1ull << protocol_feature::kReplyAck}));
  f.send(make_request(Request::SetVringNum, VringState{0, 2 * kRingSize}, true));
  Message ack = f.reply(Request::SetVringNum);
  EXPECT_EQ(std::get<U64>(ack.body).value, 1u);
  expect_closed(f, "above the device maximum");
}

// --- the server loop --------------------------------------------------------------------------

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/iovirt-vus-XXXXXX";
    EXPECT_NE(::mkdtemp(tmpl), nullptr);
    path_ = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  [[nodiscard]] std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

Result<Connection> connect_to(const std::string& path) {
  Fd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.data(), path.size());
  for (int i = 0; i < kWaitMs / 10; ++i) {
    if (::connect(s.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0)
      return Connection(std::move(s));
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return fail_errno("connect " + path);
}

uint64_t get_features(Connection& c) {
  EXPECT_TRUE(c.send(make_request(Request::GetFeatures)).has_value());
  auto r = c.receive(Role::Frontend, Limits{});
  EXPECT_TRUE(r.has_value() && r->has_value());
  if (!r || !r->has_value()) return 0;
  return std::get<U64>((*r)->body).value;
}

TEST_F(VhostUserBackendTest, ServerSurvivesAHostilePeerAndServesTheNext) {
  TempDir dir;
  const std::string sock = dir.file("blk.sock");
  auto srv = VhostUserServer::listen(sock, *backend);
  ASSERT_TRUE(srv.has_value()) << srv.error().message();
  std::thread loop([&] { EXPECT_TRUE((*srv)->run().has_value()); });

  {
    auto bad = connect_to(sock);
    ASSERT_TRUE(bad.has_value()) << bad.error().message();
    const Header h{static_cast<uint32_t>(Request::GetFeatures), 0x2 /* version 2 */, 0};
    ASSERT_TRUE(bad->send_raw(std::span(reinterpret_cast<const uint8_t*>(&h), sizeof h), {})
                    .has_value());
    auto r = bad->recv();
    EXPECT_TRUE(!r || !r->has_value()) << "a bad version got an answer";
  }
  auto good = connect_to(sock);
  ASSERT_TRUE(good.has_value());
  EXPECT_EQ(get_features(*good), backend->offered_features());
  EXPECT_GE((*srv)->connections_served(), 1u);

  (*srv)->stop();
  loop.join();
  srv->reset();
  EXPECT_FALSE(std::filesystem::exists(sock)) << "the socket path was left behind";
}

TEST_F(VhostUserBackendTest, ServerReplacesAStaleSocketAndRefusesALiveOneOrAFile) {
  TempDir dir;
  const std::string sock = dir.file("blk.sock");
  {
    // A stale socket: bound, then its owner went away without unlinking it.
    Fd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, sock.data(), sock.size());
    ASSERT_EQ(::bind(s.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a), 0);
  }
  auto srv = VhostUserServer::listen(sock, *backend);
  ASSERT_TRUE(srv.has_value()) << srv.error().message();
  auto second = VhostUserServer::listen(sock, *backend);
  ASSERT_FALSE(second.has_value());
  EXPECT_NE(second.error().message().find("in use"), std::string::npos);

  const std::string file = dir.file("plain");
  { std::FILE* fp = std::fopen(file.c_str(), "w"); ASSERT_NE(fp, nullptr); std::fclose(fp); }
  auto third = VhostUserServer::listen(file, *backend);
  ASSERT_FALSE(third.has_value());
  EXPECT_NE(third.error().message().find("not a socket"), std::string::npos);
}

// --- the daemon -------------------------------------------------------------------------------

#ifdef IOVIRT_VHOST_BIN
pid_t spawn(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));  // NOLINT
  argv.push_back(nullptr);
  pid_t pid = -1;
  EXPECT_EQ(::posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ), 0);
  return pid;
}

int wait_exit(pid_t pid) {
  int status = 0;
  EXPECT_EQ(::waitpid(pid, &status, 0), pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST(VhostDaemon, ServesBlkSurvivesAHostilePeerAndExitsCleanlyOnSigterm) {
  TempImage image;
  TempDir dir;
  const std::string sock = dir.file("d.sock");
  const pid_t pid = spawn({IOVIRT_VHOST_BIN, "blk", "--socket", sock, "--file", image.path(),
                           "--queues", "2"});
  ASSERT_GT(pid, 0);
  {
    auto c = connect_to(sock);
    ASSERT_TRUE(c.has_value()) << c.error().message();
    const uint64_t f = get_features(*c);
    EXPECT_NE(f & (1ull << kFeatureProtocolFeatures), 0u);
    EXPECT_NE(f & feature_bit(VIRTIO_F_VERSION_1), 0u);
    EXPECT_NE(f & feature_bit(blk::VIRTIO_BLK_F_MQ), 0u);
    EXPECT_TRUE(c->send(make_request(Request::GetQueueNum)).has_value());
    auto q = c->receive(Role::Frontend, Limits{});
    ASSERT_TRUE(q.has_value() && q->has_value());
    EXPECT_EQ(std::get<U64>((*q)->body).value, 2u);
  }
  {
    // A hostile peer (a too-many-fds SET_MEM_TABLE) loses its connection...
    auto bad = connect_to(sock);
    ASSERT_TRUE(bad.has_value());
    std::vector<Fd> fds;
    std::vector<int> raw_fds;
    for (int i = 0; i < 3; ++i) {
      fds.push_back(new_eventfd());
      raw_fds.push_back(fds.back().get());
    }
    std::vector<uint8_t> p(sizeof(Header) + 8 + 32, 0);
    const Header h{static_cast<uint32_t>(Request::SetMemTable), kVersion, 8 + 32};
    std::memcpy(p.data(), &h, sizeof h);
    p[sizeof h] = 1;  // one region, three fds
    ASSERT_TRUE(bad->send_raw(p, raw_fds).has_value());
    auto r = bad->recv();
    EXPECT_TRUE(!r || !r->has_value()) << "the hostile peer got an answer";
  }
  {
    // ...and the daemon serves the next front-end.
    auto c = connect_to(sock);
    ASSERT_TRUE(c.has_value());
    EXPECT_NE(get_features(*c) & feature_bit(VIRTIO_F_VERSION_1), 0u);
  }
  ASSERT_EQ(::kill(pid, SIGTERM), 0);
  EXPECT_EQ(wait_exit(pid), 0);
  EXPECT_FALSE(std::filesystem::exists(sock));
}

TEST(VhostDaemon, UsageErrorsExitTwoAndRuntimeErrorsExitOne) {
  EXPECT_EQ(wait_exit(spawn({IOVIRT_VHOST_BIN, "blk", "--socket", "/tmp/x.sock"})), 2);
  EXPECT_EQ(wait_exit(spawn({IOVIRT_VHOST_BIN, "blk", "--bogus"})), 2);
  TempDir dir;
  EXPECT_EQ(wait_exit(spawn({IOVIRT_VHOST_BIN, "blk", "--socket", dir.file("s"), "--file",
                             dir.file("missing.img")})),
            1);
}
#endif

}  // namespace
}  // namespace iovirt::virtio::vhost_user
