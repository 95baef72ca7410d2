// iovirt's vhost-user front-end against a scripted back-end that offers what DPDK's vhost library
// offers for net: no VIRTIO_NET_F_MAC and no VIRTIO_NET_F_STATUS (the front-end serves the config
// space). The driver still sees MAC and STATUS, but SET_FEATURES must carry only bits the back-end
// offered: DPDK refuses anything else ("received invalid negotiated features") and the rings are
// then never programmed (found in the lab against dpdk-testpmd net_vhost).
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "iovirt/core/eventfd.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/virtio/device.hpp"
#include "iovirt/virtio/net.hpp"
#include "iovirt/virtio/ring.hpp"
#include "iovirt/virtio/vhost_user/frontend.hpp"
#include "iovirt/virtio/vhost_user/protocol.hpp"
#include "iovirt/virtio/virtqueue.hpp"

namespace iovirt::virtio::vhost_user {
namespace {

constexpr uint16_t kQueueSize = 64;

class NoIrq final : public VirtioInterrupt {
 public:
  explicit NoIrq(EventFd fd) : fd_(std::move(fd)) {}
  void notify_queue(uint16_t) override {}
  void notify_config() override {}
  int queue_irqfd(uint16_t) override { return fd_.fd(); }

 private:
  EventFd fd_;
};

// Listens on `path`, accepts one front-end, answers the GET_* requests with `features` (no
// REPLY_ACK, so nothing else is answered) and records every request until the front-end closes.
class ScriptedBackend {
 public:
  ScriptedBackend(const std::string& path, uint64_t features) : features_(features) {
    listen_ = Fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
    EXPECT_EQ(::bind(listen_.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(listen_.get(), 1), 0);
    thread_ = std::thread([this] { serve(); });
  }
  ~ScriptedBackend() {
    if (thread_.joinable()) thread_.join();
  }
  ScriptedBackend(const ScriptedBackend&) = delete;
  ScriptedBackend& operator=(const ScriptedBackend&) = delete;

  void join() {
    if (thread_.joinable()) thread_.join();
  }
  std::vector<Message> requests;  // read after join()

 private:
  void serve() {
    Connection c(Fd(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC)));
    for (;;) {
      auto m = c.receive(Role::Backend, Limits{});
      if (!m || !*m) return;
      const Request r = (*m)->request;
      if (r == Request::GetFeatures) {
        (void)c.send(make_reply(r, U64{features_}));
      } else if (r == Request::GetProtocolFeatures) {
        (void)c.send(make_reply(r, U64{1ull << protocol_feature::kMq}));
      } else if (r == Request::GetQueueNum) {
        (void)c.send(make_reply(r, U64{2}));
      }
      requests.push_back(std::move(**m));
    }
  }

  uint64_t features_;
  Fd listen_;
  std::thread thread_;
};

TEST(VhostUserFrontend, NetSetFeaturesCarriesOnlyTheBackendsBits) {
  char dir[] = "/tmp/iovirt-vu-fe-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string sock = std::string(dir) + "/net.sock";
  using namespace net_feature;
  const uint64_t backend = feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_F_EVENT_IDX) |
                           feature_bit(kCsum) | feature_bit(kMrgRxbuf) |
                           feature_bit(kFeatureProtocolFeatures);
  std::optional<ScriptedBackend> be;
  be.emplace(sock, backend);

  MetricsRegistry metrics;
  FrontendOptions o;
  o.socket = sock;
  o.name = "net0";
  o.device_id = kDeviceIdNet;
  o.queue_size = kQueueSize;
  o.mac = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
  auto f = Frontend::connect(o, metrics);
  ASSERT_TRUE(f) << f.error().what();
  Frontend& fe = **f;
  // The driver is offered MAC and STATUS (served by the front-end), plus the back-end's bits.
  const uint64_t offered = fe.features();
  EXPECT_TRUE(has(offered, kMac));
  EXPECT_TRUE(has(offered, kStatus));
  EXPECT_TRUE(has(offered, kCsum));
  EXPECT_TRUE(has(offered, kMrgRxbuf));
  ASSERT_TRUE(fe.negotiate(offered));

  const RegionSpec regions[] = {{0, 1ull << 20}};
  auto mem = GuestMemory::create(regions);
  ASSERT_TRUE(mem) << mem.error().what();
  std::vector<Virtqueue> vqs;
  std::vector<EventFd> kicks;
  for (uint16_t q = 0; q < 2; ++q) {
    auto vq = Virtqueue::create(kQueueSize);
    ASSERT_TRUE(vq);
    vqs.push_back(std::move(*vq));
    auto k = EventFd::create();
    ASSERT_TRUE(k);
    kicks.push_back(std::move(*k));
  }
  for (uint16_t q = 0; q < 2; ++q) {
    const uint64_t base = 0x10000ull * (q + 1);
    ASSERT_TRUE(vqs[q].set_size(kQueueSize));
    vqs[q].set_desc_area(base);
    vqs[q].set_driver_area(base + 0x1000);
    vqs[q].set_device_area(base + 0x2000);
    vqs[q].set_ready(true);
  }
  auto call = EventFd::create();
  ASSERT_TRUE(call);
  NoIrq irq(std::move(*call));
  ActivateContext ctx;
  ctx.mem = &*mem;
  ctx.features = offered;
  for (uint16_t q = 0; q < 2; ++q) ctx.queues.push_back(QueueBinding{q, &vqs[q], kicks[q].fd()});
  ctx.irq = &irq;
  ctx.fail = [](const std::string&) {};
  ASSERT_TRUE(fe.activate(std::move(ctx)));
  f->reset();  // closes the connection: the back-end's loop ends
  be->join();

  std::optional<uint64_t> set;
  int kicks_seen = 0;
  for (const Message& m : be->requests) {
    if (m.request == Request::SetFeatures) set = std::get<U64>(m.body).value;
    if (m.request == Request::SetVringKick) ++kicks_seen;
  }
  ASSERT_TRUE(set.has_value()) << "the front-end never sent SET_FEATURES";
  EXPECT_EQ(*set & ~backend, 0u) << "SET_FEATURES carries bits the back-end did not offer: 0x"
                                 << std::hex << (*set & ~backend);
  EXPECT_TRUE(has(*set, kCsum));
  EXPECT_TRUE(has(*set, VIRTIO_F_VERSION_1));
  EXPECT_TRUE(has(*set, kFeatureProtocolFeatures));
  EXPECT_EQ(kicks_seen, 2) << "both rings programmed";
  be.reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace iovirt::virtio::vhost_user
