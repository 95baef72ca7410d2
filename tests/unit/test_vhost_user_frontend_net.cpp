// iovirt's vhost-user front-end for a multi-queue virtio-net against iovirt's own back-end
// (VhostUserBackend serving a VirtioNet whose frames loop back), both in this process over a real
// AF_UNIX socket. The test plays the guest driver. It checks what the front-end itself does for
// net: the control queue is served by the front-end (the back-end never sees it), only the first
// pair is enabled until VQ_PAIRS_SET, VQ_PAIRS_SET becomes SET_VRING_ENABLE, and a back-end that
// restarts gets the enabled pairs again.
#include <gtest/gtest.h>
#include <poll.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "iovirt/core/eventfd.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/virtio/net.hpp"
#include "iovirt/virtio/packet_port.hpp"
#include "iovirt/virtio/ring.hpp"
#include "iovirt/virtio/testing/driver_queue.hpp"
#include "iovirt/virtio/vhost_user/backend.hpp"
#include "iovirt/virtio/vhost_user/frontend.hpp"
#include "iovirt/virtio/virtqueue.hpp"

namespace iovirt::virtio {
namespace {

using testing::Buf;
using testing::DriverQueue;
using testing::DriverQueueLayout;
using namespace std::chrono_literals;

constexpr uint16_t kQSize = 64;
constexpr uint16_t kPairs = 2;
constexpr uint16_t kQueues = 2 * kPairs + 1;  // rx0 tx0 rx1 tx1 ctrl
constexpr uint16_t kCtrl = 2 * kPairs;

// Per-queue call eventfds (the back-end writes them) and a count of the interrupts the front-end
// sends itself (the control queue's).
class Interrupts final : public VirtioInterrupt {
 public:
  Interrupts() {
    for (auto& c : calls) c.emplace(std::move(*EventFd::create()));
  }
  void notify_queue(uint16_t q) override { ++notified[q]; }
  void notify_config() override {}
  int queue_irqfd(uint16_t q) override { return calls[q]->fd(); }
  std::array<std::optional<EventFd>, kQueues> calls;
  std::array<std::atomic<int>, kQueues> notified{};
};

// The back-end side: a VirtioNet on loopback ports served on `socket` by a thread.
struct Backend {
  Backend(VirtioNet& dev, MetricsRegistry& m, const std::string& socket) {
    auto b = vhost_user::VhostUserBackend::create(dev, m);
    EXPECT_TRUE(b) << b.error().what();
    backend = std::move(*b);
    auto s = vhost_user::VhostUserServer::listen(socket, *backend);
    EXPECT_TRUE(s) << s.error().what();
    server = std::move(*s);
    thread = std::thread([this] { (void)server->run(); });
  }
  ~Backend() {
    server->stop();
    thread.join();
  }
  std::unique_ptr<vhost_user::VhostUserBackend> backend;
  std::unique_ptr<vhost_user::VhostUserServer> server;
  std::thread thread;
};

class FrontendNetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/iovirt-vufe-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    socket_ = dir_ + "/net.sock";
    const RegionSpec r[] = {{0, 8ull << 20}};
    auto m = GuestMemory::create(r);
    ASSERT_TRUE(m) << m.error().what();
    mem_.emplace(std::move(*m));
    NetConfig cfg;
    cfg.port = [](uint16_t, uint16_t) -> Result<std::unique_ptr<PacketPort>> {
      return make_loopback_port(64);
    };
    cfg.port_name = "ring-loopback";
    cfg.queue_pairs = kPairs;
    cfg.queue_size = kQSize;
    auto d = VirtioNet::create(cfg, backend_metrics_, "be0");
    ASSERT_TRUE(d) << d.error().what();
    dev_ = std::move(*d);
    backend_.emplace(*dev_, backend_metrics_, socket_);
  }
  void TearDown() override {
    frontend_.reset();
    backend_.reset();
    dev_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  void connect_and_activate() {
    vhost_user::FrontendOptions o;
    o.socket = socket_;
    o.name = "net0";
    o.device_id = kDeviceIdNet;
    o.queues = kPairs;
    o.queue_size = kQSize;
    o.mac = {0x52, 0x54, 0x00, 0x00, 0x00, 0x01};
    o.backoff_first_ms = 20;
    o.backoff_max_ms = 100;
    auto f = vhost_user::Frontend::connect(o, metrics_);
    ASSERT_TRUE(f) << f.error().what();
    frontend_ = std::move(*f);
    ASSERT_EQ(frontend_->num_queues(), kQueues);
    const uint64_t want = feature_bit(VIRTIO_F_VERSION_1) | feature_bit(net_feature::kMq) |
                          feature_bit(net_feature::kCtrlVq) | feature_bit(net_feature::kMac);
    ASSERT_EQ(frontend_->features() & want, want);
    std::array<uint8_t, kNetConfigSize> c{};
    frontend_->read_config(0, c);
    EXPECT_EQ(c[8] | (c[9] << 8), kPairs);
    ASSERT_TRUE(frontend_->negotiate(want));

    ActivateContext ctx;
    ctx.mem = &*mem_;
    ctx.features = want;
    for (uint16_t i = 0; i < kQueues; ++i) {
      const uint64_t base = 0x10000ull * (i + 1);
      auto vq = Virtqueue::create(kQSize);
      ASSERT_TRUE(vq);
      vqs_[i].emplace(std::move(*vq));
      vqs_[i]->set_desc_area(base);
      vqs_[i]->set_driver_area(base + 0x1000);
      vqs_[i]->set_device_area(base + 0x2000);
      vqs_[i]->set_ready(true);
      auto drv = DriverQueue::create(*mem_, DriverQueueLayout{kQSize, base, base + 0x1000, base + 0x2000});
      ASSERT_TRUE(drv);
      drv_[i].emplace(std::move(*drv));
      kicks_[i].emplace(std::move(*EventFd::create()));
      ctx.queues.push_back(QueueBinding{i, &*vqs_[i], kicks_[i]->fd()});
    }
    ctx.irq = &irq_;
    ctx.fail = [this](const std::string& why) { failure_ = why; };
    ASSERT_TRUE(frontend_->activate(std::move(ctx)));
  }

  uint64_t alloc(uint32_t len) {
    const uint64_t g = next_;
    next_ += (len + 63) & ~63ull;
    return g;
  }
  void post_rx(uint16_t q, int n) {
    for (int i = 0; i < n; ++i) {
      const Buf b{alloc(2048), 2048, true};
      auto h = drv_[q]->add_chain(std::span<const Buf>(&b, 1));
      ASSERT_TRUE(h);
      rx_bufs_[q][*h] = b.gpa;
    }
    ASSERT_TRUE(kicks_[q]->write(1));
  }
  std::vector<uint8_t> send_frame(uint16_t q, uint8_t seed) {
    std::vector<uint8_t> f(kNetHdrSize + 100, 0);
    for (size_t i = kNetHdrSize; i < f.size(); ++i) f[i] = static_cast<uint8_t>(seed + i);
    const uint64_t g = alloc(static_cast<uint32_t>(f.size()));
    EXPECT_TRUE(mem_->write(g, f));
    const Buf b{g, static_cast<uint32_t>(f.size()), false};
    EXPECT_TRUE(drv_[q]->add_chain(std::span<const Buf>(&b, 1)));
    EXPECT_TRUE(kicks_[q]->write(1));
    return {f.begin() + kNetHdrSize, f.end()};
  }
  std::optional<VirtqUsedElem> wait_used(uint16_t q, std::chrono::milliseconds limit) {
    const auto end = std::chrono::steady_clock::now() + limit;
    do {
      auto e = drv_[q]->take_used();
      if (e && *e) return **e;
      std::this_thread::sleep_for(1ms);
    } while (std::chrono::steady_clock::now() < end);
    return std::nullopt;
  }
  // The frame delivered on rx queue q, without its header.
  std::optional<std::vector<uint8_t>> recv_frame(uint16_t q) {
    auto u = wait_used(q, 5s);
    if (!u || u->len < kNetHdrSize) return std::nullopt;
    std::vector<uint8_t> b(u->len);
    EXPECT_TRUE(mem_->read(rx_bufs_[q].at(static_cast<uint16_t>(u->id)), b));
    return std::vector<uint8_t>(b.begin() + kNetHdrSize, b.end());
  }
  // VIRTIO_NET_CTRL_MQ / VQ_PAIRS_SET n; returns the ack byte.
  std::optional<uint8_t> set_pairs(uint16_t n) {
    const uint64_t cmd = alloc(4);
    const uint64_t ack = alloc(1);
    const uint8_t c[4] = {VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
                          static_cast<uint8_t>(n & 0xff), static_cast<uint8_t>(n >> 8)};
    EXPECT_TRUE(mem_->write(cmd, c));
    EXPECT_TRUE(mem_->write_obj(ack, uint8_t{0xee}));
    const Buf bufs[] = {{cmd, 2, false}, {cmd + 2, 2, false}, {ack, 1, true}};
    EXPECT_TRUE(drv_[kCtrl]->add_chain(bufs));
    EXPECT_TRUE(kicks_[kCtrl]->write(1));
    if (!wait_used(kCtrl, 5s)) return std::nullopt;
    uint8_t a = 0;
    EXPECT_TRUE(mem_->read(ack, std::span<uint8_t>(&a, 1)));
    return a;
  }

  std::string dir_, socket_;
  MetricsRegistry metrics_, backend_metrics_;
  std::optional<GuestMemory> mem_;
  std::unique_ptr<VirtioNet> dev_;
  std::optional<Backend> backend_;
  std::unique_ptr<vhost_user::Frontend> frontend_;
  std::array<std::optional<Virtqueue>, kQueues> vqs_;
  std::array<std::optional<DriverQueue>, kQueues> drv_;
  std::array<std::optional<EventFd>, kQueues> kicks_;
  std::array<std::map<uint16_t, uint64_t>, kQueues> rx_bufs_;
  Interrupts irq_;
  std::string failure_;
  uint64_t next_ = 0x200000;
};

TEST_F(FrontendNetTest, ControlQueueEnablesTheSecondPairInTheBackend) {
  connect_and_activate();
  post_rx(0, 4);
  post_rx(2, 4);
  // Pair 0 works from the start.
  const auto f0 = send_frame(1, 1);
  auto got0 = recv_frame(0);
  ASSERT_TRUE(got0);
  EXPECT_EQ(*got0, f0);
  // Pair 1 stays off until the driver asks for it (section 5.1.6.5.5).
  const auto f1 = send_frame(3, 2);
  EXPECT_FALSE(wait_used(3, 200ms)) << "a disabled pair was served";
  auto ack = set_pairs(2);
  ASSERT_TRUE(ack);
  EXPECT_EQ(*ack, VIRTIO_NET_OK);
  EXPECT_GE(irq_.notified[kCtrl].load(), 1) << "the control queue's interrupt is the front-end's";
  auto got1 = recv_frame(2);
  ASSERT_TRUE(got1) << "pair 1 not served after VQ_PAIRS_SET 2";
  EXPECT_EQ(*got1, f1);
  // Out of range: refused, nothing changes.
  ack = set_pairs(kPairs + 1);
  ASSERT_TRUE(ack);
  EXPECT_EQ(*ack, VIRTIO_NET_ERR);
  EXPECT_TRUE(failure_.empty()) << failure_;
}

TEST_F(FrontendNetTest, ARestartedBackendGetsTheEnabledPairsAgain) {
  connect_and_activate();
  post_rx(2, 4);
  ASSERT_EQ(set_pairs(2), std::optional<uint8_t>(VIRTIO_NET_OK));
  backend_.reset();  // the back-end goes away
  for (int i = 0; i < 200 && frontend_->connected(); ++i) std::this_thread::sleep_for(10ms);
  EXPECT_FALSE(frontend_->connected());
  const auto f = send_frame(3, 9);  // queued while no back-end exists
  backend_.emplace(*dev_, backend_metrics_, socket_);
  auto got = recv_frame(2);
  ASSERT_TRUE(got) << "pair 1 not served by the restarted back-end";
  EXPECT_EQ(*got, f);
  // The back-end serves as soon as the rings are programmed, before the monitor counts the
  // reconnection: wait for it (bounded).
  for (int i = 0; i < 200 && frontend_->reconnects() == 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(frontend_->reconnects(), 1u);
}

TEST_F(FrontendNetTest, MorePairsThanTheBackendServesIsAOneLineError) {
  vhost_user::FrontendOptions o;
  o.socket = socket_;
  o.name = "net0";
  o.device_id = kDeviceIdNet;
  o.queues = 64;
  auto f = vhost_user::Frontend::connect(o, metrics_);
  ASSERT_FALSE(f);
  EXPECT_NE(f.error().what().find("queue pairs"), std::string::npos) << f.error().what();
  EXPECT_EQ(f.error().what().find('\n'), std::string::npos);
}

}  // namespace
}  // namespace iovirt::virtio
