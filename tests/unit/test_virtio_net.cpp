// virtio-net on a real tap in a private network namespace: a dedicated thread unshares its
// network namespace (per task, so the rest of the test process is untouched), creates the device
// (whose tap then lives in that namespace), brings the link up and opens an AF_PACKET socket on
// it. The test plays the guest driver with DriverQueues and the host with the packet socket.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "iovirt/core/eventfd.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/virtio/net.hpp"
#include "iovirt/virtio/ring.hpp"
#include "iovirt/virtio/testing/driver_queue.hpp"
#include "iovirt/virtio/virtqueue.hpp"

namespace iovirt::virtio {
namespace {

using testing::Buf;
using testing::DriverQueue;
using testing::DriverQueueLayout;
using namespace std::chrono_literals;

constexpr uint16_t kEtherType = 0x88b5;  // IEEE local experimental: nothing else sends it
constexpr uint16_t kQSize = 64;
constexpr uint64_t kBufBase = 0x100000;
constexpr const char* kTap = "ivtnet0";

template <class Pred>
bool wait_for(Pred p, std::chrono::milliseconds limit = 5000ms) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!p()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

class RecordingIrq final : public VirtioInterrupt {
 public:
  void notify_queue(uint16_t q) override { counts[q].fetch_add(1); }
  void notify_config() override { config.fetch_add(1); }
  int queue_irqfd(uint16_t) override { return -1; }
  std::array<std::atomic<int>, 8> counts{};
  std::atomic<int> config{0};
};

// The device publishes a used buffer before it interrupts: a driver that saw the buffer waits
// (bounded) for the interrupt count rather than reading it at once.
bool interrupted(const std::atomic<int>& count, int at_least) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (count.load() < at_least) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

std::vector<uint8_t> make_frame(const std::array<uint8_t, 6>& dst, size_t len, uint8_t seed) {
  std::vector<uint8_t> f(len);
  std::memcpy(f.data(), dst.data(), 6);
  const uint8_t src[6] = {0x02, 0x11, 0x22, 0x33, 0x44, 0x55};
  std::memcpy(f.data() + 6, src, 6);
  f[12] = kEtherType >> 8;
  f[13] = kEtherType & 0xff;
  for (size_t i = 14; i < len; ++i) f[i] = static_cast<uint8_t>(seed + i * 7);
  return f;
}

// Ethernet (to dst, from a fixed source) + IPv4 10.0.0.1 -> 10.0.0.2 with protocol `proto` at the
// start of `frame` (the whole frame is the IP packet's length; no checksum); returns the L4 header.
uint8_t* write_ipv4(std::span<uint8_t> frame, const std::array<uint8_t, 6>& dst, uint8_t proto) {
  std::memcpy(frame.data(), dst.data(), 6);
  const uint8_t src[6] = {0x02, 0x11, 0x22, 0x33, 0x44, 0x66};
  std::memcpy(frame.data() + 6, src, 6);
  frame[12] = 0x08;
  frame[13] = 0x00;
  uint8_t* ip = frame.data() + 14;
  std::memset(ip, 0, 20);
  const auto ip_len = static_cast<uint16_t>(frame.size() - 14);
  ip[0] = 0x45;
  ip[2] = static_cast<uint8_t>(ip_len >> 8);
  ip[3] = static_cast<uint8_t>(ip_len & 0xff);
  ip[8] = 64;
  ip[9] = proto;
  const uint8_t a[4] = {10, 0, 0, 1}, b[4] = {10, 0, 0, 2};
  std::memcpy(ip + 12, a, 4);
  std::memcpy(ip + 16, b, 4);
  return ip + 20;
}

bool is_ours(std::span<const uint8_t> f, uint16_t ethertype = kEtherType) {
  return f.size() >= 14 && f[12] == (ethertype >> 8) && f[13] == (ethertype & 0xff);
}

// Everything created inside the private namespace.
struct NetNs {
  std::unique_ptr<VirtioNet> dev;
  Fd pkt;   // AF_PACKET socket bound to the tap
  Fd nsfd;  // the namespace itself, for setns() from another thread
  int ifindex = 0;
  std::string skip;   // why the environment cannot run the test
  std::string error;  // device creation error
};

NetNs make_in_netns(NetConfig cfg, MetricsRegistry& metrics) {
  NetNs r;
  std::thread t([&] {
    if (::unshare(CLONE_NEWNET) != 0) {
      r.skip = std::string("cannot unshare a network namespace (needs CAP_SYS_ADMIN): ") +
               std::strerror(errno);
      return;
    }
    if (::access("/dev/net/tun", R_OK | W_OK) != 0) {
      r.skip = "/dev/net/tun is not usable here";
      return;
    }
    // No IPv6 autoconfiguration chatter on the test link.
    if (int fd = ::open("/proc/sys/net/ipv6/conf/default/disable_ipv6", O_WRONLY); fd >= 0) {
      (void)!::write(fd, "1", 1);
      ::close(fd);
    }
    r.nsfd = Fd(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
    auto d = VirtioNet::create(cfg, metrics, "net0");
    if (!d) {
      r.error = d.error().message();
      return;
    }
    r.dev = std::move(*d);
    Fd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, cfg.tap.c_str(), IFNAMSIZ - 1);
    ifr.ifr_mtu = 9000;
    if (::ioctl(s.get(), SIOCSIFMTU, &ifr) != 0) r.skip = "SIOCSIFMTU failed";
    ifr.ifr_flags = IFF_UP;
    if (::ioctl(s.get(), SIOCSIFFLAGS, &ifr) != 0) r.skip = "SIOCSIFFLAGS up failed";
    r.ifindex = static_cast<int>(::if_nametoindex(cfg.tap.c_str()));
    r.pkt = Fd(::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL)));
    sockaddr_ll sll{};
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = r.ifindex;
    if (!r.pkt || ::bind(r.pkt.get(), reinterpret_cast<sockaddr*>(&sll), sizeof sll) != 0) {
      r.skip = "AF_PACKET socket on the tap failed";
    }
  });
  t.join();
  return r;
}

struct QueueSet {
  explicit QueueSet(uint16_t idx, uint64_t ring_base) : index(idx) {
    layout = DriverQueueLayout{kQSize, ring_base, ring_base + 0x1000, ring_base + 0x2000};
  }
  uint16_t index;
  DriverQueueLayout layout;
  std::optional<Virtqueue> vq;
  std::optional<DriverQueue> drv;
  std::optional<EventFd> kick;
};

class NetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const RegionSpec spec[] = {{0, 16ull << 20}};
    auto m = GuestMemory::create(spec);
    ASSERT_TRUE(m.has_value()) << m.error().message();
    mem.emplace(std::move(*m));
  }
  void TearDown() override {
    if (ns.dev) ns.dev->reset();
  }

  // Returns false (test skipped) when the environment lacks tap/netns support.
  bool make_device(NetConfig cfg = {}) {
    cfg.queue_size = kQSize;
    if (cfg.port) {  // no tap, no namespace: the frames go to a PacketPort
      auto d = VirtioNet::create(cfg, metrics, "net0");
      EXPECT_TRUE(d.has_value()) << d.error().message();
      if (d) ns.dev = std::move(*d);
      return ns.dev != nullptr;
    }
    if (cfg.tap.empty()) cfg.tap = kTap;
    ns = make_in_netns(cfg, metrics);
    if (!ns.skip.empty()) return false;
    EXPECT_TRUE(ns.error.empty()) << ns.error;
    return ns.dev != nullptr;
  }

  // Fresh driver-side queues for `count` queues and an activated device.
  Status activate(uint64_t features, uint16_t count) {
    queues.clear();
    next_buf = kBufBase;
    for (uint16_t i = 0; i < count; ++i) {
      auto& q = queues.emplace_back(std::make_unique<QueueSet>(i, 0x10000ull * (i + 1)));
      auto vq = Virtqueue::create(kQSize);
      if (!vq) return std::unexpected(vq.error());
      q->vq.emplace(std::move(*vq));
      q->vq->set_desc_area(q->layout.desc_gpa);
      q->vq->set_driver_area(q->layout.avail_gpa);
      q->vq->set_device_area(q->layout.used_gpa);
      q->vq->set_event_idx((features & feature_bit(VIRTIO_F_EVENT_IDX)) != 0);
      q->vq->set_indirect((features & feature_bit(VIRTIO_F_INDIRECT_DESC)) != 0);
      q->vq->set_ready(true);
      auto d = DriverQueue::create(*mem, q->layout);
      if (!d) return std::unexpected(d.error());
      q->drv.emplace(std::move(*d));
      auto k = EventFd::create();
      if (!k) return std::unexpected(k.error());
      q->kick.emplace(std::move(*k));
    }
    if (auto st = ns.dev->negotiate(features); !st) return st;
    ActivateContext ctx;
    ctx.mem = &*mem;
    ctx.features = features;
    for (auto& q : queues) ctx.queues.push_back(QueueBinding{q->index, &*q->vq, q->kick->fd()});
    ctx.irq = &irq;
    ctx.fail = [this](const std::string& why) {
      std::lock_guard<std::mutex> l(fail_mu);
      fails.push_back(why);
    };
    return ns.dev->activate(std::move(ctx));
  }

  uint64_t alloc(uint32_t len) {
    const uint64_t g = next_buf;
    next_buf += (len + 63) & ~63ull;
    return g;
  }

  void kick(uint16_t q) { ASSERT_TRUE(queues[q]->kick->write().has_value()); }

  uint16_t post_rx(uint16_t q, uint32_t len) {
    const uint64_t g = alloc(len);
    const Buf b{g, len, true};
    auto h = queues[q]->drv->add_chain(std::span<const Buf>(&b, 1));
    EXPECT_TRUE(h.has_value());
    rx_bufs[*h] = g;
    return *h;
  }

  // A frame and its header in one device-readable buffer, as DPDK's virtio PMD and Linux send
  // small frames (the one-descriptor fast path of the port backend). Queued without a kick.
  uint16_t queue_tx_one(uint16_t q, std::span<const uint8_t> hdr, std::span<const uint8_t> frame) {
    std::vector<uint8_t> all(hdr.begin(), hdr.end());
    all.insert(all.end(), frame.begin(), frame.end());
    const uint64_t g = alloc(static_cast<uint32_t>(all.size()));
    EXPECT_TRUE(mem->write(g, all).has_value());
    const Buf b{g, static_cast<uint32_t>(all.size()), false};
    auto head = queues[q]->drv->add_chain(std::span<const Buf>(&b, 1));
    EXPECT_TRUE(head.has_value());
    return *head;
  }

  uint16_t send_tx(uint16_t q, std::span<const uint8_t> hdr, std::span<const uint8_t> frame,
                   size_t split_hdr_at = 0) {
    std::vector<Buf> bufs;
    const uint64_t h = alloc(static_cast<uint32_t>(hdr.size()));
    EXPECT_TRUE(mem->write(h, hdr).has_value());
    if (split_hdr_at > 0 && split_hdr_at < hdr.size()) {
      bufs.push_back(Buf{h, static_cast<uint32_t>(split_hdr_at), false});
      bufs.push_back(
          Buf{h + split_hdr_at, static_cast<uint32_t>(hdr.size() - split_hdr_at), false});
    } else {
      bufs.push_back(Buf{h, static_cast<uint32_t>(hdr.size()), false});
    }
    const uint64_t f = alloc(static_cast<uint32_t>(frame.size()));
    EXPECT_TRUE(mem->write(f, frame).has_value());
    bufs.push_back(Buf{f, static_cast<uint32_t>(frame.size()), false});
    auto head = queues[q]->drv->add_chain(bufs);
    EXPECT_TRUE(head.has_value());
    kick(q);
    return *head;
  }

  std::optional<VirtqUsedElem> wait_used(uint16_t q, std::chrono::milliseconds limit = 5000ms) {
    std::optional<VirtqUsedElem> e;
    wait_for(
        [&] {
          auto r = queues[q]->drv->take_used();
          if (r && *r) e = **r;
          return e.has_value();
        },
        limit);
    return e;
  }

  // Next frame of ours seen on the tap's host side.
  std::optional<std::vector<uint8_t>> host_recv(std::chrono::milliseconds limit = 5000ms,
                                                uint16_t ethertype = kEtherType) {
    const auto end = std::chrono::steady_clock::now() + limit;
    std::vector<uint8_t> buf(70000);
    while (std::chrono::steady_clock::now() < end) {
      pollfd p{ns.pkt.get(), POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      const ssize_t n = ::recv(ns.pkt.get(), buf.data(), buf.size(), 0);
      if (n <= 0) continue;
      buf.resize(static_cast<size_t>(n));
      if (is_ours(buf, ethertype)) return buf;
      buf.resize(70000);
    }
    return std::nullopt;
  }

  void host_send(std::span<const uint8_t> frame) {
    sockaddr_ll sll{};
    sll.sll_family = AF_PACKET;
    sll.sll_ifindex = ns.ifindex;
    sll.sll_halen = 6;
    ASSERT_EQ(::sendto(ns.pkt.get(), frame.data(), frame.size(), 0,
                       reinterpret_cast<sockaddr*>(&sll), sizeof sll),
              static_cast<ssize_t>(frame.size()))
        << std::strerror(errno);
  }

  // Collects one received frame from rx queue q: header, payload, chains used.
  struct RxFrame {
    VirtioNetHdr hdr{};
    std::vector<uint8_t> frame;
    std::vector<uint32_t> lens;
  };
  std::optional<RxFrame> guest_recv(uint16_t q, std::chrono::milliseconds limit = 5000ms,
                                    uint16_t ethertype = kEtherType) {
    for (;;) {
      auto e = wait_used(q, limit);
      if (!e) return std::nullopt;
      RxFrame f;
      std::vector<uint8_t> all;
      auto take = [&](const VirtqUsedElem& u) {
        std::vector<uint8_t> b(u.len);
        EXPECT_TRUE(mem->read(rx_bufs.at(static_cast<uint16_t>(u.id)), b).has_value());
        all.insert(all.end(), b.begin(), b.end());
        f.lens.push_back(u.len);
      };
      take(*e);
      if (all.size() < kNetHdrSize) return f;
      std::memcpy(&f.hdr, all.data(), kNetHdrSize);
      for (uint16_t i = 1; i < f.hdr.num_buffers; ++i) {
        auto more = wait_used(q, limit);
        if (!more) return std::nullopt;
        take(*more);
      }
      f.frame.assign(all.begin() + kNetHdrSize, all.end());
      if (is_ours(f.frame, ethertype)) return f;
    }
  }

  std::vector<std::string> failures() {
    std::lock_guard<std::mutex> l(fail_mu);
    return fails;
  }

  uint64_t base_features() const {
    return feature_bit(VIRTIO_F_VERSION_1) | feature_bit(net_feature::kMac) |
           feature_bit(net_feature::kStatus);
  }

  MetricsRegistry metrics;
  std::optional<GuestMemory> mem;
  NetNs ns;
  RecordingIrq irq;
  std::vector<std::unique_ptr<QueueSet>> queues;
  std::map<uint16_t, uint64_t> rx_bufs;
  uint64_t next_buf = kBufBase;
  std::mutex fail_mu;
  std::vector<std::string> fails;
};

#define NEED_DEVICE(...)                             \
  do {                                               \
    if (!make_device(__VA_ARGS__)) {                 \
      if (!ns.skip.empty()) GTEST_SKIP() << ns.skip; \
      FAIL() << "device creation failed";            \
    }                                                \
  } while (0)

const std::array<uint8_t, 6> kBroadcast = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

TEST_F(NetTest, FeaturesAndConfigSpace) {
  NetConfig cfg;
  cfg.mac = std::array<uint8_t, 6>{0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
  NEED_DEVICE(cfg);
  auto& d = *ns.dev;
  EXPECT_EQ(d.device_id(), kDeviceIdNet);
  EXPECT_EQ(d.num_queues(), 3);
  const uint64_t f = d.features();
  for (unsigned bit :
       {VIRTIO_F_VERSION_1, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, net_feature::kMac,
        net_feature::kStatus, net_feature::kMrgRxbuf, net_feature::kCtrlVq, net_feature::kCsum,
        net_feature::kHostTso4, net_feature::kGuestCsum, net_feature::kGuestTso4}) {
    EXPECT_NE(f & feature_bit(bit), 0u) << "bit " << bit;
  }
  EXPECT_EQ(f & feature_bit(net_feature::kMq), 0u);  // one pair
  std::array<uint8_t, kNetConfigSize> c{};
  d.read_config(0, c);
  EXPECT_EQ(c[0], 0x52);
  EXPECT_EQ(c[5], 0x56);
  EXPECT_EQ(c[6] | (c[7] << 8), VIRTIO_NET_S_LINK_UP);
  EXPECT_EQ(c[8] | (c[9] << 8), 1);
  std::array<uint8_t, 2> part{};
  d.read_config(4, part);
  EXPECT_EQ(part[0], 0x34);
}

TEST_F(NetTest, RandomMacIsLocallyAdministeredUnicast) {
  NEED_DEVICE();
  EXPECT_EQ(ns.dev->mac()[0] & 0x03, 0x02);
}

TEST_F(NetTest, NegotiateRefusesBrokenCombinations) {
  NEED_DEVICE();
  auto& d = *ns.dev;
  EXPECT_FALSE(d.negotiate(feature_bit(net_feature::kMac)).has_value());  // no VERSION_1
  EXPECT_FALSE(d.negotiate(base_features() | feature_bit(net_feature::kGuestTso4)).has_value());
  EXPECT_TRUE(d.negotiate(base_features() | feature_bit(net_feature::kGuestCsum) |
                          feature_bit(net_feature::kGuestTso4))
                  .has_value());
  EXPECT_FALSE(d.negotiate(base_features() | feature_bit(40)).has_value());  // not offered
}

TEST_F(NetTest, ActivateAppliesGuestOffloadsToTheTap) {
  NEED_DEVICE();
  const uint64_t f = base_features() | feature_bit(net_feature::kGuestCsum) |
                     feature_bit(net_feature::kGuestTso4) | feature_bit(net_feature::kGuestTso6);
  ASSERT_TRUE(activate(f, 2).has_value());
  EXPECT_EQ(ns.dev->applied_offloads(), unsigned{TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6});
  ns.dev->reset();
  EXPECT_EQ(ns.dev->applied_offloads(), 0u);
}

TEST_F(NetTest, TxFrameReachesTheTap) {
  NEED_DEVICE();
  ASSERT_TRUE(activate(base_features() | feature_bit(VIRTIO_F_EVENT_IDX), 2).has_value());
  const VirtioNetHdr hdr{};
  std::array<uint8_t, kNetHdrSize> h{};
  std::memcpy(h.data(), &hdr, sizeof hdr);
  for (size_t split : {size_t{0}, size_t{5}}) {
    const auto frame = make_frame(kBroadcast, 100, static_cast<uint8_t>(split));
    const uint16_t head = send_tx(1, h, frame, split);
    auto got = host_recv();
    ASSERT_TRUE(got.has_value()) << "split " << split;
    EXPECT_EQ(*got, frame);
    auto used = wait_used(1);
    ASSERT_TRUE(used.has_value());
    EXPECT_EQ(used->id, head);
    EXPECT_EQ(used->len, 0u);
  }
  EXPECT_TRUE(interrupted(irq.counts[1], 1));
  EXPECT_TRUE(failures().empty());
}

TEST_F(NetTest, TxThroughAnIndirectTableAndSuppressedInterrupts) {
  NEED_DEVICE();
  ASSERT_TRUE(activate(base_features() | feature_bit(VIRTIO_F_INDIRECT_DESC), 2).has_value());
  // The driver does not want TX interrupts (VIRTQ_AVAIL_F_NO_INTERRUPT, section 2.7.7).
  ASSERT_TRUE(queues[1]->drv->set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT).has_value());
  const std::array<uint8_t, kNetHdrSize> h{};
  const auto frame = make_frame(kBroadcast, 150, 21);
  const uint64_t hg = alloc(kNetHdrSize);
  const uint64_t fg = alloc(static_cast<uint32_t>(frame.size()));
  const uint64_t table = alloc(64);
  ASSERT_TRUE(mem->write(hg, h).has_value());
  ASSERT_TRUE(mem->write(fg, frame).has_value());
  const Buf bufs[] = {{hg, kNetHdrSize, false}, {fg, static_cast<uint32_t>(frame.size()), false}};
  ASSERT_TRUE(queues[1]->drv->add_indirect_chain(bufs, table).has_value());
  kick(1);
  auto got = host_recv();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, frame);
  ASSERT_TRUE(wait_used(1).has_value());
  ASSERT_TRUE(wait_for([&] {
    return metrics
               .counter("iovirt_virtio_queue_suppressed_interrupts_total", "",
                        {{"device", "net0"}, {"queue", "1"}})
               .value() >= 1;
  }));
  EXPECT_EQ(irq.counts[1].load(), 0);
}

// A 3000-byte TCP/IPv4 frame with a TSO header (HOST_TSO4): the tap takes it whole and the
// kernel segments it later; a GSO header with gso_size 0 is dropped by the device.
TEST_F(NetTest, TxTso4FrameIsAcceptedByTheTap) {
  NEED_DEVICE();
  const uint64_t f =
      base_features() | feature_bit(net_feature::kCsum) | feature_bit(net_feature::kHostTso4);
  ASSERT_TRUE(activate(f, 2).has_value());
  std::vector<uint8_t> frame(3000, 0x5a);
  uint8_t* tcp = write_ipv4(frame, kBroadcast, 6);  // TCP
  std::memset(tcp, 0, 20);
  tcp[12] = 5 << 4;  // data offset
  tcp[13] = 0x18;    // PSH ACK
  VirtioNetHdr hdr{};
  hdr.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
  hdr.gso_type = VIRTIO_NET_HDR_GSO_TCPV4;
  hdr.hdr_len = 54;
  hdr.gso_size = 1000;
  hdr.csum_start = 34;
  hdr.csum_offset = 16;
  std::array<uint8_t, kNetHdrSize> h{};
  std::memcpy(h.data(), &hdr, sizeof hdr);
  send_tx(1, h, frame);
  auto got = host_recv(5000ms, 0x0800);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->size(), frame.size());
  ASSERT_TRUE(wait_used(1).has_value());
  EXPECT_EQ(ns.dev->net_metrics().tx_dropped->value(), 0u);
  hdr.gso_size = 0;
  std::memcpy(h.data(), &hdr, sizeof hdr);
  send_tx(1, h, frame);
  ASSERT_TRUE(wait_used(1).has_value());
  EXPECT_EQ(ns.dev->net_metrics().tx_dropped->value(), 1u);
}

TEST_F(NetTest, TxHostileHeaderIsDroppedAndTheDeviceGoesOn) {
  NEED_DEVICE();
  ASSERT_TRUE(activate(base_features(), 2).has_value());
  // 8 bytes: shorter than virtio_net_hdr_v1.
  const std::array<uint8_t, 8> short_hdr{};
  const uint64_t g = alloc(8);
  ASSERT_TRUE(mem->write(g, short_hdr).has_value());
  const Buf b{g, 8, false};
  ASSERT_TRUE(queues[1]->drv->add_chain(std::span<const Buf>(&b, 1)).has_value());
  kick(1);
  auto used = wait_used(1);
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->len, 0u);
  // NEEDS_CSUM without VIRTIO_NET_F_CSUM negotiated.
  VirtioNetHdr bad{};
  bad.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
  std::array<uint8_t, kNetHdrSize> h{};
  std::memcpy(h.data(), &bad, sizeof bad);
  send_tx(1, h, make_frame(kBroadcast, 80, 1));
  ASSERT_TRUE(wait_used(1).has_value());
  EXPECT_EQ(ns.dev->net_metrics().tx_dropped->value(), 2u);
  // A good frame still goes out.
  std::array<uint8_t, kNetHdrSize> ok{};
  const auto frame = make_frame(kBroadcast, 64, 9);
  send_tx(1, ok, frame);
  auto got = host_recv();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, frame);
  EXPECT_TRUE(failures().empty());
}

TEST_F(NetTest, RxFrameLandsWithHeaderAndOneBuffer) {
  NEED_DEVICE();
  ASSERT_TRUE(activate(base_features(), 2).has_value());
  for (int i = 0; i < 4; ++i) post_rx(0, 2048);
  kick(0);
  const auto frame = make_frame(ns.dev->mac(), 300, 3);
  host_send(frame);
  auto got = guest_recv(0);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->hdr.num_buffers, 1);
  EXPECT_EQ(got->hdr.gso_type, VIRTIO_NET_HDR_GSO_NONE);
  EXPECT_EQ(got->frame, frame);
  EXPECT_EQ(got->lens.size(), 1u);
  EXPECT_TRUE(interrupted(irq.counts[0], 1));
}

TEST_F(NetTest, RxMergeableSpansSeveralSmallBuffers) {
  NEED_DEVICE();
  ASSERT_TRUE(activate(base_features() | feature_bit(net_feature::kMrgRxbuf), 2).has_value());
  for (int i = 0; i < 16; ++i) post_rx(0, 1024);
  kick(0);
  const auto frame = make_frame(ns.dev->mac(), 3000, 5);
  host_send(frame);
  auto got = guest_recv(0);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->hdr.num_buffers, 3);
  ASSERT_EQ(got->lens.size(), 3u);
  EXPECT_EQ(got->lens[0], 1024u);
  EXPECT_EQ(got->lens[1], 1024u);
  EXPECT_EQ(got->lens[2], 3000u + kNetHdrSize - 2048u);
  EXPECT_EQ(got->frame, frame);
  // And a small one right after uses one buffer.
  const auto small = make_frame(ns.dev->mac(), 60, 6);
  host_send(small);
  got = guest_recv(0);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->hdr.num_buffers, 1);
  EXPECT_EQ(got->frame, small);
}

// Many frames of mixed sizes while the driver keeps refilling a small ring: every frame arrives
// once, in order, intact (the rings wrap several times; the chain cache is reused).
TEST_F(NetTest, RxManyFramesInOrderWithRefills) {
  NEED_DEVICE();
  ASSERT_TRUE(activate(base_features() | feature_bit(net_feature::kMrgRxbuf) |
                           feature_bit(VIRTIO_F_EVENT_IDX),
                       2)
                  .has_value());
  for (int i = 0; i < 32; ++i) post_rx(0, 1536);
  kick(0);
  constexpr int kFrames = 300;  // below the tap's default queue length (500)
  std::vector<std::vector<uint8_t>> sent;
  for (int i = 0; i < kFrames; ++i) {
    const size_t len = 60 + static_cast<size_t>(i * 37) % 2940;
    auto f = make_frame(ns.dev->mac(), len, static_cast<uint8_t>(i));
    f[14] = static_cast<uint8_t>(i);
    f[15] = static_cast<uint8_t>(i >> 8);
    sent.push_back(f);
    host_send(f);
  }
  for (int i = 0; i < kFrames; ++i) {
    auto got = guest_recv(0);
    ASSERT_TRUE(got.has_value()) << "frame " << i;
    ASSERT_EQ(got->frame, sent[static_cast<size_t>(i)])
        << "frame " << i << " got " << got->frame.size() << " want "
        << sent[static_cast<size_t>(i)].size() << " nb " << got->hdr.num_buffers << " chains "
        << got->lens.size() << " first " << got->lens[0] << " got id " << int(got->frame[14]);
    EXPECT_EQ(got->hdr.num_buffers, got->lens.size());
    for (size_t k = 0; k < got->lens.size(); ++k) post_rx(0, 1536);
    kick(0);
  }
  EXPECT_EQ(ns.dev->net_metrics().rx_dropped->value(), 0u);
  EXPECT_TRUE(failures().empty());
}

// MRG_RXBUF with fewer buffer bytes than the frame: the device keeps the frame until the driver
// adds buffers instead of dropping it.
TEST_F(NetTest, RxMergeableWaitsForEnoughBuffers) {
  NEED_DEVICE();
  ASSERT_TRUE(activate(base_features() | feature_bit(net_feature::kMrgRxbuf), 2).has_value());
  post_rx(0, 1536);
  kick(0);
  const auto frame = make_frame(ns.dev->mac(), 3000, 31);
  host_send(frame);
  EXPECT_FALSE(wait_used(0, 200ms).has_value());
  post_rx(0, 1536);
  post_rx(0, 1536);
  kick(0);
  auto got = guest_recv(0);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->hdr.num_buffers, 2);
  EXPECT_EQ(got->frame, frame);
  EXPECT_EQ(ns.dev->net_metrics().rx_dropped->value(), 0u);
}

TEST_F(NetTest, RxWithoutBuffersWaitsForTheKick) {
  NEED_DEVICE();
  ASSERT_TRUE(activate(base_features() | feature_bit(VIRTIO_F_EVENT_IDX), 2).has_value());
  const auto frame = make_frame(ns.dev->mac(), 200, 7);
  host_send(frame);
  // Nothing can be used: there is no buffer. The device asks for a kick (avail_event).
  EXPECT_FALSE(wait_used(0, 200ms).has_value());
  post_rx(0, 2048);
  kick(0);
  auto got = guest_recv(0);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->frame, frame);
  // The frame came with the kick, not from a device polling an empty ring.
  const Labels rx0{{"device", "net0"}, {"queue", "0"}};
  EXPECT_GE(metrics.counter("iovirt_virtio_queue_kicks_total", "", rx0).value(), 1u);
}

TEST_F(NetTest, RxChainWithoutWritableBytesIsReturnedUnused) {
  NEED_DEVICE();
  ASSERT_TRUE(activate(base_features(), 2).has_value());
  const uint64_t g = alloc(64);
  const Buf ro{g, 64, false};
  const auto bad = queues[0]->drv->add_chain(std::span<const Buf>(&ro, 1));
  ASSERT_TRUE(bad.has_value());
  rx_bufs[*bad] = g;
  post_rx(0, 2048);
  kick(0);
  const auto frame = make_frame(ns.dev->mac(), 100, 8);
  host_send(frame);
  auto first = wait_used(0);
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->id, *bad);
  EXPECT_EQ(first->len, 0u);
  auto got = guest_recv(0);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->frame, frame);
  EXPECT_EQ(ns.dev->net_metrics().rx_bad_chains->value(), 1u);
  EXPECT_TRUE(failures().empty());
}

TEST_F(NetTest, DescriptorOutsideMemoryFailsTheDeviceWhichSurvivesReset) {
  NEED_DEVICE();
  ASSERT_TRUE(activate(base_features(), 2).has_value());
  ASSERT_TRUE(queues[1]->drv->write_desc(0, VirtqDesc{1ull << 40, 64, 0, 0}).has_value());
  ASSERT_TRUE(queues[1]->drv->publish_head(0).has_value());
  kick(1);
  ASSERT_TRUE(wait_for([&] { return !failures().empty(); }));
  EXPECT_NE(failures()[0].find("queue 1"), std::string::npos) << failures()[0];
  ns.dev->reset();
  ASSERT_TRUE(activate(base_features(), 2).has_value());
  std::array<uint8_t, kNetHdrSize> h{};
  const auto frame = make_frame(kBroadcast, 90, 10);
  send_tx(1, h, frame);
  auto got = host_recv();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, frame);
}

TEST_F(NetTest, ControlQueueSetsQueuePairs) {
  NetConfig cfg;
  cfg.queue_pairs = 2;
  NEED_DEVICE(cfg);
  ASSERT_NE(ns.dev->features() & feature_bit(net_feature::kMq), 0u);
  EXPECT_EQ(ns.dev->num_queues(), 5);
  const uint64_t f =
      base_features() | feature_bit(net_feature::kCtrlVq) | feature_bit(net_feature::kMq);
  ASSERT_TRUE(activate(f, 5).has_value());
  auto request = [&](std::vector<uint8_t> cmd) -> uint8_t {
    const uint64_t c = alloc(static_cast<uint32_t>(cmd.size()));
    const uint64_t a = alloc(1);
    EXPECT_TRUE(mem->write(c, cmd).has_value());
    const uint8_t poison = 0xee;
    EXPECT_TRUE(mem->write(a, std::span<const uint8_t>(&poison, 1)).has_value());
    const Buf bufs[] = {{c, static_cast<uint32_t>(cmd.size()), false}, {a, 1, true}};
    EXPECT_TRUE(queues[4]->drv->add_chain(bufs).has_value());
    kick(4);
    auto used = wait_used(4);
    EXPECT_TRUE(used.has_value());
    if (!used) return 0xff;
    EXPECT_EQ(used->len, 1u);
    uint8_t ack = 0xff;
    EXPECT_TRUE(mem->read(a, std::span<uint8_t>(&ack, 1)).has_value());
    return ack;
  };
  EXPECT_EQ(ns.dev->active_pairs(), 1);
  EXPECT_EQ(request({VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 2, 0}), VIRTIO_NET_OK);
  EXPECT_EQ(ns.dev->active_pairs(), 2);
  EXPECT_EQ(request({VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 3, 0}), VIRTIO_NET_ERR);
  EXPECT_EQ(request({VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 0, 0}), VIRTIO_NET_ERR);
  EXPECT_EQ(request({VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET}), VIRTIO_NET_ERR);
  EXPECT_EQ(request({9, 0, 1, 2, 3}), VIRTIO_NET_ERR);
  EXPECT_EQ(ns.dev->active_pairs(), 2);
  EXPECT_EQ(request({VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 1, 0}), VIRTIO_NET_OK);
  EXPECT_EQ(ns.dev->active_pairs(), 1);
  EXPECT_EQ(ns.dev->net_metrics().ctrl_errors->value(), 4u);
  EXPECT_TRUE(failures().empty());
}

TEST_F(NetTest, SecondQueuePairCarriesTraffic) {
  NetConfig cfg;
  cfg.queue_pairs = 2;
  NEED_DEVICE(cfg);
  const uint64_t f =
      base_features() | feature_bit(net_feature::kCtrlVq) | feature_bit(net_feature::kMq);
  ASSERT_TRUE(activate(f, 5).has_value());
  std::array<uint8_t, kNetHdrSize> h{};
  const auto frame = make_frame(kBroadcast, 77, 12);
  send_tx(3, h, frame);  // tx1
  auto got = host_recv();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, frame);
}

// iovirt-vhost's device (frontend_owns_ctrl): the vhost-user front-end serves the control queue
// and may keep CTRL_VQ to itself, as QEMU does, so MQ arrives without it; and there is no
// VQ_PAIRS_SET here: the pairs whose rings the front-end bound (SET_VRING_ENABLE) receive.
TEST_F(NetTest, FrontendOwnedControlQueueTakesMqAloneAndTheBoundPairsReceive) {
  NetConfig cfg;
  cfg.queue_pairs = 2;
  cfg.frontend_owns_ctrl = true;
  NEED_DEVICE(cfg);
  const uint64_t f = base_features() | feature_bit(net_feature::kMq);
  // Pair 0 alone bound: one receiving pair.
  ASSERT_TRUE(activate(f, 2).has_value());
  EXPECT_EQ(ns.dev->active_pairs(), 1);
  ns.dev->reset();
  ASSERT_TRUE(activate(f, 4).has_value());
  EXPECT_EQ(ns.dev->active_pairs(), 2);
  // Both tap queues attached: UDP flows from the host spread over rx0 and rx1 (the tap picks a
  // queue by flow hash; 64 source ports all on one queue would be a 2^-63 chance).
  for (int i = 0; i < kQSize; ++i) {  // room for every frame on either queue
    post_rx(0, 2048);
    post_rx(2, 2048);
  }
  kick(0);
  kick(2);
  constexpr int kFrames = 64;
  for (int i = 0; i < kFrames; ++i) {
    std::vector<uint8_t> fr(14 + 20 + 8 + 16, 0);
    uint8_t* udp = write_ipv4(fr, ns.dev->mac(), 17);  // UDP
    udp[0] = static_cast<uint8_t>((1000 + i) >> 8);
    udp[1] = static_cast<uint8_t>(1000 + i);
    udp[2] = 0x13;
    udp[3] = 0x89;
    udp[5] = static_cast<uint8_t>(fr.size() - 34);
    host_send(fr);
  }
  int got[2] = {0, 0};
  EXPECT_TRUE(wait_for([&] {
    for (int p = 0; p < 2; ++p) {
      for (;;) {
        auto r = queues[2 * p]->drv->take_used();
        if (!r || !*r) break;
        ++got[p];
      }
    }
    return got[0] + got[1] >= kFrames;
  })) << "rx0 " << got[0] << ", rx1 " << got[1];
  EXPECT_GT(got[0], 0);
  EXPECT_GT(got[1], 0);
  EXPECT_TRUE(failures().empty());
}

TEST_F(NetTest, MqWithoutCtrlVqIsRefusedByADeviceThatServesTheControlQueue) {
  NetConfig cfg;
  cfg.queue_pairs = 2;
  NEED_DEVICE(cfg);
  const uint64_t f = base_features() | feature_bit(net_feature::kMq);
  auto st = ns.dev->negotiate(f);
  ASSERT_FALSE(st.has_value());
  EXPECT_NE(st.error().message().find("MQ needs CTRL_VQ"), std::string::npos)
      << st.error().message();
}

TEST_F(NetTest, ResetWhileTrafficRuns) {
  NEED_DEVICE();
  ASSERT_TRUE(activate(base_features() | feature_bit(net_feature::kMrgRxbuf), 2).has_value());
  for (int i = 0; i < kQSize; ++i) post_rx(0, 1536);
  kick(0);
  std::atomic<bool> stop{false};
  const auto frame = make_frame(ns.dev->mac(), 1000, 13);
  std::thread flood([&] {
    sockaddr_ll sll{};
    sll.sll_family = AF_PACKET;
    sll.sll_ifindex = ns.ifindex;
    sll.sll_halen = 6;
    while (!stop.load()) {
      (void)::sendto(ns.pkt.get(), frame.data(), frame.size(), 0, reinterpret_cast<sockaddr*>(&sll),
                     sizeof sll);
    }
  });
  // The used index as the driver sees it (the Virtqueue belongs to the device thread until reset).
  ASSERT_TRUE(wait_for([&] {
    auto u = queues[0]->drv->used_idx();
    return u && *u > 4;
  }));
  ns.dev->reset();
  const uint16_t used_after = queues[0]->vq->next_used();
  auto idx_after = queues[0]->drv->used_idx();
  std::this_thread::sleep_for(50ms);
  // Nothing of the device touches the ring after reset() returned.
  EXPECT_EQ(queues[0]->vq->next_used(), used_after);
  EXPECT_EQ(queues[0]->drv->used_idx().value(), idx_after.value());
  stop.store(true);
  flood.join();
  ASSERT_TRUE(activate(base_features(), 2).has_value());
  std::array<uint8_t, kNetHdrSize> h{};
  const auto out = make_frame(kBroadcast, 70, 14);
  send_tx(1, h, out);
  auto got = host_recv();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, out);
  EXPECT_TRUE(failures().empty());
}

// The interface is deleted under the running device: the tap fd reports an error, the device
// asks for a reset (ctx.fail) and its thread does not spin on the dead fd.
TEST_F(NetTest, DeletedTapFailsTheDevice) {
  NEED_DEVICE();
  if (::access("/usr/sbin/ip", X_OK) != 0 && ::access("/sbin/ip", X_OK) != 0) {
    GTEST_SKIP() << "needs ip(8) to delete the link";
  }
  ASSERT_TRUE(activate(base_features(), 2).has_value());
  post_rx(0, 2048);
  kick(0);
  int rc = -1;
  std::thread t([&] {
    if (::setns(ns.nsfd.get(), CLONE_NEWNET) != 0) return;
    const std::string cmd = std::string("ip link del ") + kTap + " 2>/dev/null";
    rc = std::system(cmd.c_str());
  });
  t.join();
  ASSERT_EQ(rc, 0);
  ASSERT_TRUE(wait_for([&] { return !failures().empty(); }));
  EXPECT_NE(failures()[0].find("tap queue 0"), std::string::npos) << failures()[0];
  ns.dev->reset();  // returns: the thread was not stuck
}

TEST(NetCreate, ErrorsNameTheTapAndTheFix) {
  MetricsRegistry m;
  NetConfig cfg;
  cfg.tap = "this-name-is-far-too-long-for-linux";
  auto d = VirtioNet::create(cfg, m, "net0");
  ASSERT_FALSE(d.has_value());
  EXPECT_NE(d.error().message().find(cfg.tap), std::string::npos) << d.error().message();
  cfg.tap = "tap0";
  cfg.queue_size = 100;
  d = VirtioNet::create(cfg, m, "net0");
  ASSERT_FALSE(d.has_value());
  EXPECT_NE(d.error().message().find("power of 2"), std::string::npos);
}

TEST_F(NetTest, VhostWithoutTheModuleSaysModprobe) {
  if (::access("/dev/vhost-net", F_OK) == 0) GTEST_SKIP() << "/dev/vhost-net exists here";
  NetConfig cfg;
  cfg.tap = kTap;
  cfg.vhost = true;
  ns = make_in_netns(cfg, metrics);
  if (!ns.skip.empty() && ns.error.empty()) GTEST_SKIP() << ns.skip;
  ASSERT_FALSE(ns.error.empty());
  EXPECT_NE(ns.error.find("modprobe vhost_net"), std::string::npos) << ns.error;
}

// ---- The packet-port backend (NetConfig::port): iovirt-vhost net's data path ----

NetConfig port_config(PacketPortFactory f, uint32_t poll_us = 0) {
  NetConfig cfg;
  cfg.port = std::move(f);
  cfg.port_name = "test port";
  cfg.poll_us = poll_us;
  return cfg;
}

PacketPortFactory loopback_ports() {
  return [](uint16_t, uint16_t) -> Result<std::unique_ptr<PacketPort>> {
    return make_loopback_port(64);
  };
}

// The loopback port on its own: frames come back in the order sent, across the end of its ring
// (3 slots asked for: the ring is 4, indexed under a mask), and the ones beyond its depth are
// dropped and their buffers go back to the pool (its 3 + 128 buffers are all allocatable again).
TEST(LoopbackPortTest, KeepsOrderAcrossTheRingEndAndDropsBeyondItsDepth) {
  auto port = make_loopback_port(3);
  uint32_t next = 0;
  auto send = [&](uint32_t n) {
    std::vector<PacketBuf> bufs(n);
    ASSERT_EQ(port->alloc(bufs), n);
    for (PacketBuf& b : bufs) {
      std::memcpy(b.data, &next, sizeof next);
      b.len = sizeof next;
      ++next;
    }
    port->transmit(bufs);
  };
  auto take = [&](uint32_t n) {
    std::vector<PacketBuf> bufs(n);
    const uint32_t got = port->receive(bufs);
    std::vector<uint32_t> seq;
    for (uint32_t i = 0; i < got; ++i) {
      uint32_t v = 0;
      std::memcpy(&v, bufs[i].data, sizeof v);
      seq.push_back(v);
    }
    port->release(std::span(bufs.data(), got));
    return seq;
  };
  send(5);  // 0, 1, 2 queued; 3 and 4 dropped
  EXPECT_EQ(take(2), (std::vector<uint32_t>{0, 1}));
  send(3);  // 5, 6 queued behind 2 (slots 3 and 0: across the end); 7 dropped
  EXPECT_EQ(take(8), (std::vector<uint32_t>{2, 5, 6}));
  EXPECT_TRUE(take(1).empty());
  std::vector<PacketBuf> all(3 + 128 + 1);
  const uint32_t n = port->alloc(all);
  EXPECT_EQ(n, 3u + 128u);
  port->release(std::span(all.data(), n));
}

class NetPortTest : public NetTest, public ::testing::WithParamInterface<uint32_t> {};

TEST_F(NetTest, PortOffersNoOffloads) {
  NEED_DEVICE(port_config(loopback_ports()));
  const uint64_t f = ns.dev->features();
  for (unsigned bit : {net_feature::kCsum, net_feature::kGuestCsum, net_feature::kHostTso4,
                       net_feature::kGuestTso4, net_feature::kHostUfo}) {
    EXPECT_EQ(f & feature_bit(bit), 0u) << "bit " << bit;
  }
  EXPECT_NE(f & feature_bit(net_feature::kMrgRxbuf), 0u);
  EXPECT_NE(f & feature_bit(VIRTIO_F_RING_PACKED), 0u);
  EXPECT_NE(f & feature_bit(VIRTIO_F_IN_ORDER), 0u) << "a port's worker returns chains in order";
  NetConfig both = port_config(loopback_ports());
  both.vhost = true;
  auto d = VirtioNet::create(both, metrics, "net1");
  ASSERT_FALSE(d.has_value());
  EXPECT_NE(d.error().message().find("vhost=on needs a tap"), std::string::npos);
}

// Both with and without busy-polling: every frame sent comes back, bytes intact, behind a
// fresh header whose num_buffers the device set.
TEST_P(NetPortTest, LoopbackReturnsEveryFrameBehindAFreshHeader) {
  NEED_DEVICE(port_config(loopback_ports(), GetParam()));
  ASSERT_TRUE(activate(base_features() | feature_bit(VIRTIO_F_EVENT_IDX), 2).has_value());
  for (int i = 0; i < 8; ++i) post_rx(0, 2048);
  kick(0);
  std::array<uint8_t, kNetHdrSize> h{};
  for (int i = 0; i < 20; ++i) {
    if (i == 8) {  // the first 8 buffers are used up: more, and a kick
      for (int j = 0; j < 12; ++j) post_rx(0, 2048);
      kick(0);
    }
    const auto frame = make_frame(kBroadcast, 60 + static_cast<size_t>(i) * 70, static_cast<uint8_t>(i));
    send_tx(1, h, frame);
    auto got = guest_recv(0);
    ASSERT_TRUE(got.has_value()) << "frame " << i;
    EXPECT_EQ(got->frame, frame) << "frame " << i;
    EXPECT_EQ(got->hdr.num_buffers, 1);
    EXPECT_EQ(got->hdr.flags, 0);
    ASSERT_TRUE(wait_used(1).has_value());
  }
  EXPECT_EQ(ns.dev->net_metrics().tx_dropped->value(), 0u);
  EXPECT_EQ(metrics.counter("iovirt_virtio_queue_chains_total", "", {{"device", "net0"}, {"queue", "1"}})
                .value(),
            20u);
  EXPECT_TRUE(failures().empty());
}

INSTANTIATE_TEST_SUITE_P(PollModes, NetPortTest, ::testing::Values(0u, 200u),
                         [](const auto& p) { return p.param == 0 ? "EventDriven" : "BusyPoll"; });

TEST_F(NetTest, PortLoopbackMergeableSpansSmallBuffersAndWaitsForEnough) {
  NEED_DEVICE(port_config(loopback_ports()));
  ASSERT_TRUE(activate(base_features() | feature_bit(net_feature::kMrgRxbuf), 2).has_value());
  for (int i = 0; i < 3; ++i) post_rx(0, 256);
  kick(0);
  std::array<uint8_t, kNetHdrSize> h{};
  const auto frame = make_frame(kBroadcast, 1500, 7);  // 1512 bytes with the header: 6 buffers
  send_tx(1, h, frame);
  ASSERT_TRUE(wait_used(1).has_value());
  EXPECT_FALSE(wait_used(0, 100ms).has_value()) << "delivered into too few buffers";
  for (int i = 0; i < 5; ++i) post_rx(0, 256);
  kick(0);
  auto got = guest_recv(0);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->hdr.num_buffers, 6);
  EXPECT_EQ(got->frame, frame);
  EXPECT_EQ(got->lens.size(), 6u);
  EXPECT_EQ(got->lens.back(), 1512u - 5 * 256);
  EXPECT_TRUE(failures().empty());
}

TEST_F(NetTest, PortSinkCountsTheFramesItCopied) {
  auto counters = std::make_shared<SinkCounters>();
  NEED_DEVICE(port_config([counters](uint16_t, uint16_t) -> Result<std::unique_ptr<PacketPort>> {
    return make_sink_port(counters);
  }));
  ASSERT_TRUE(activate(base_features(), 2).has_value());
  std::array<uint8_t, kNetHdrSize> h{};
  uint64_t bytes = 0;
  for (int i = 0; i < 10; ++i) {
    const auto frame = make_frame(kBroadcast, 64 + static_cast<size_t>(i), 1);
    bytes += frame.size();
    send_tx(1, h, frame);
    ASSERT_TRUE(wait_used(1).has_value());
  }
  ASSERT_TRUE(wait_for([&] { return std::atomic_ref(counters->frames).load() == 10; }));
  EXPECT_EQ(std::atomic_ref(counters->bytes).load(), bytes);
}

// The worker's busy-cycle counters (iovirt_net_worker_busy_*): rounds that moved frames count,
// idle polling does not, and the figures reach the counters once the worker goes idle.
TEST_F(NetTest, PortWorkerCountsOnlyTheRoundsThatMovedFrames) {
  auto counters = std::make_shared<SinkCounters>();
  NEED_DEVICE(port_config([counters](uint16_t, uint16_t) -> Result<std::unique_ptr<PacketPort>> {
    return make_sink_port(counters);
  }));
  ASSERT_TRUE(activate(base_features(), 2).has_value());
  ASSERT_EQ(ns.dev->net_metrics().workers.size(), 1u);
  const NetMetrics::Worker& w = ns.dev->net_metrics().workers[0];
  std::this_thread::sleep_for(30ms);  // thousands of idle polling rounds
  EXPECT_EQ(w.busy_rounds->value(), 0u);
  EXPECT_EQ(w.busy_cycles->value(), 0u);

  std::array<uint8_t, kNetHdrSize> h{};
  for (int i = 0; i < 10; ++i) {
    send_tx(1, h, make_frame(kBroadcast, 64, 1));
    ASSERT_TRUE(wait_used(1).has_value());
  }
  ASSERT_TRUE(wait_for([&] { return w.busy_rounds->value() > 0; }));
  ASSERT_TRUE(wait_for([&] { return std::atomic_ref(counters->frames).load() == 10; }));
  std::this_thread::sleep_for(30ms);
  const uint64_t rounds = w.busy_rounds->value();
  const uint64_t cycles = w.busy_cycles->value();
  EXPECT_GE(rounds, 1u);
  EXPECT_LE(rounds, 10u) << "only rounds that took a frame";
  EXPECT_GE(cycles, rounds);
  std::this_thread::sleep_for(30ms);
  EXPECT_EQ(w.busy_rounds->value(), rounds) << "idle rounds counted";
  EXPECT_EQ(w.busy_cycles->value(), cycles) << "idle cycles counted";
  EXPECT_TRUE(failures().empty());
}

// NetConfig::poll_gap_ns (iovirt-vhost --poll-gap-ns): while busy-polling, once the busy rounds
// since the last empty one have moved a burst or more, each empty round after them is followed by
// the gap, so over an idle stretch the
// worker looks at the port (and the rings) at most once per gap; after a round that moved a frame
// or two it polls back to back (hundreds of thousands of times in 50 ms), so a frame at a time
// pays no gap. Bounds: elapsed / gap + 2 at most with the gap (a slow or descheduled worker polls
// less, never more), and more than that without. Every frame comes back intact throughout.
TEST_F(NetTest, PortPollGapFollowsABurstNotASingleFrame) {
  class CountingPort final : public PacketPort {
   public:
    CountingPort(std::unique_ptr<PacketPort> inner, std::shared_ptr<std::atomic<uint64_t>> polls)
        : inner_(std::move(inner)), polls_(std::move(polls)) {}
    std::string describe() const override { return "counting " + inner_->describe(); }
    uint32_t alloc(std::span<PacketBuf> b) override { return inner_->alloc(b); }
    void transmit(std::span<PacketBuf> b) override { inner_->transmit(b); }
    uint32_t receive(std::span<PacketBuf> b) override {
      polls_->fetch_add(1, std::memory_order_relaxed);
      return inner_->receive(b);
    }
    void release(std::span<PacketBuf> b) override { inner_->release(b); }
    int rx_wake() const override { return inner_->rx_wake(); }
    uint32_t max_frame() const override { return inner_->max_frame(); }

   private:
    std::unique_ptr<PacketPort> inner_;
    std::shared_ptr<std::atomic<uint64_t>> polls_;
  };
  constexpr uint32_t kGapNs = 200'000;
  constexpr int kBurstFrames = 40;  // more than one 32-frame burst, published with one idx store
  auto polls = std::make_shared<std::atomic<uint64_t>>(0);
  NetConfig cfg = port_config(
      [polls](uint16_t, uint16_t) -> Result<std::unique_ptr<PacketPort>> {
        return std::make_unique<CountingPort>(make_loopback_port(64), polls);
      },
      1'000'000);  // a 1 s polling window: the worker does not sleep during the test
  cfg.poll_gap_ns = kGapNs;
  NEED_DEVICE(cfg);
  ASSERT_TRUE(activate(base_features(), 2).has_value());
  for (int i = 0; i < kBurstFrames + 8; ++i) post_rx(0, 2048);
  kick(0);
  std::array<uint8_t, kNetHdrSize> h{};
  auto frame_of = [](int i) {
    return make_frame(kBroadcast, 60 + static_cast<size_t>(i) * 30, static_cast<uint8_t>(i));
  };
  auto collect = [&](int first, int n) {
    for (int i = first; i < first + n; ++i) {
      auto got = guest_recv(0);
      ASSERT_TRUE(got.has_value()) << "frame " << i;
      EXPECT_EQ(got->frame, frame_of(i)) << "frame " << i;
      ASSERT_TRUE(wait_used(1).has_value());
    }
  };
  // Polls of the port over 50 ms of nothing, and the time they took.
  auto idle_polls = [&] {
    const uint64_t before = polls->load();
    const auto t0 = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(50ms);
    const uint64_t n = polls->load() - before;
    const auto dt = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0);
    return std::pair{n, static_cast<uint64_t>(dt.count())};
  };

  send_tx(1, h, frame_of(0));
  collect(0, 1);
  if (HasFatalFailure()) return;
  auto [light, t_light] = idle_polls();
  EXPECT_GT(light, t_light / kGapNs + 2) << "gaps after a single frame (" << light << " polls in "
                                         << t_light << " ns)";

  queues[1]->drv->hold_avail();
  for (int i = 1; i <= kBurstFrames; ++i) queue_tx_one(1, h, frame_of(i));
  ASSERT_TRUE(queues[1]->drv->release_avail().has_value());
  kick(1);
  collect(1, kBurstFrames);
  if (HasFatalFailure()) return;
  auto [heavy, t_heavy] = idle_polls();
  EXPECT_LE(heavy, t_heavy / kGapNs + 2) << heavy << " polls in " << t_heavy << " ns with a " << kGapNs
                                         << " ns gap after a burst";
  EXPECT_GE(heavy, 1u) << "the worker stopped polling inside its window";

  // A frame at a time again: it waits out at most the gap it lands in, and then no more gaps.
  send_tx(1, h, frame_of(kBurstFrames + 1));
  collect(kBurstFrames + 1, 1);
  if (HasFatalFailure()) return;
  auto [light2, t_light2] = idle_polls();
  EXPECT_GT(light2, t_light2 / kGapNs + 2) << "gaps went on after a single frame";
  EXPECT_TRUE(failures().empty());
}

TEST_F(NetTest, PortRejectsAPollGapAboveTheLimit) {
  NetConfig cfg = port_config(loopback_ports(), 100);
  cfg.poll_gap_ns = NetConfig::kMaxPollGapNs + 1;
  auto d = VirtioNet::create(cfg, metrics, "net1");
  ASSERT_FALSE(d.has_value());
  EXPECT_NE(d.error().message().find("poll_gap_ns 1000001 is above the limit"), std::string::npos)
      << d.error().message();
}

TEST_F(NetTest, PortSourceFillsEveryRxBufferAndWaitsForMore) {
  NEED_DEVICE(port_config([](uint16_t, uint16_t) -> Result<std::unique_ptr<PacketPort>> {
    return make_source_port(128);
  }));
  ASSERT_TRUE(activate(base_features() | feature_bit(VIRTIO_F_EVENT_IDX), 2).has_value());
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < 5; ++i) post_rx(0, 2048);
    kick(0);
    for (int i = 0; i < 5; ++i) {
      auto got = guest_recv(0, 5000ms, 0x0800);
      ASSERT_TRUE(got.has_value()) << "round " << round << " frame " << i;
      EXPECT_EQ(got->frame.size(), 128u);
      EXPECT_EQ(got->hdr.num_buffers, 1);
      uint64_t seq = 0;
      std::memcpy(&seq, got->frame.data() + 42, sizeof seq);
      EXPECT_EQ(seq, static_cast<uint64_t>(round * 5 + i));
    }
    EXPECT_FALSE(wait_used(0, 50ms).has_value()) << "a frame without a buffer";
  }
  EXPECT_TRUE(failures().empty());
}

TEST_F(NetTest, PortHostileTxIsDroppedAndTheDeviceGoesOn) {
  NEED_DEVICE(port_config(loopback_ports()));
  ASSERT_TRUE(activate(base_features(), 2).has_value());
  for (int i = 0; i < 4; ++i) post_rx(0, 4096);
  kick(0);
  // A header asking for an offload that was not offered: a port acts on no header field, so
  // the flag is ignored (section 5.1.6.2.2) and the frame goes out as the driver wrote it.
  VirtioNetHdr bad{};
  bad.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
  bad.gso_type = VIRTIO_NET_HDR_GSO_TCPV4;
  std::array<uint8_t, kNetHdrSize> h{};
  std::memcpy(h.data(), &bad, sizeof bad);
  const auto odd = make_frame(kBroadcast, 80, 1);
  send_tx(1, h, odd);
  auto back = guest_recv(0);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->frame, odd);
  EXPECT_EQ(back->hdr.flags, 0) << "the guest gets a fresh header";
  EXPECT_EQ(back->hdr.gso_type, VIRTIO_NET_HDR_GSO_NONE);
  ASSERT_TRUE(wait_used(1).has_value());
  const std::array<uint8_t, kNetHdrSize> ok{};
  send_tx(1, ok, make_frame(kBroadcast, 3000, 2));  // larger than a port buffer
  ASSERT_TRUE(wait_used(1).has_value());
  // Shorter than a header, in one buffer and split over two.
  queue_tx_one(1, std::span(ok.data(), 8), {});
  kick(1);
  ASSERT_TRUE(wait_used(1).has_value());
  send_tx(1, std::span(ok.data(), 4), std::span(ok.data(), 4));
  ASSERT_TRUE(wait_used(1).has_value());
  EXPECT_EQ(ns.dev->net_metrics().tx_dropped->value(), 3u);
  const auto frame = make_frame(kBroadcast, 90, 3);
  send_tx(1, ok, frame);
  auto got = guest_recv(0);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->frame, frame);
  // A descriptor outside guest memory fails the device, with a reason.
  const Buf wild{32ull << 20, 64, false};
  ASSERT_TRUE(queues[1]->drv->add_chain(std::span<const Buf>(&wild, 1)).has_value());
  kick(1);
  ASSERT_TRUE(wait_for([&] { return !failures().empty(); }));
  EXPECT_NE(failures()[0].find("queue 1"), std::string::npos) << failures()[0];
}

// The one-buffer fast path (pop_direct) and the general walk interleaved in one burst, with
// VIRTIO_F_IN_ORDER: every frame arrives, in the order sent, and the tx ring gets its chains back
// in the order they were made available.
TEST_F(NetTest, PortOneBufferAndSplitFramesKeepTheirOrder) {
  NEED_DEVICE(port_config(loopback_ports()));
  const uint64_t f = base_features() | feature_bit(VIRTIO_F_IN_ORDER) |
                     feature_bit(net_feature::kMrgRxbuf);
  ASSERT_TRUE(activate(f, 2).has_value());
  for (int i = 0; i < 40; ++i) post_rx(0, 1536);
  kick(0);
  const std::array<uint8_t, kNetHdrSize> h{};
  std::vector<std::vector<uint8_t>> sent;
  std::vector<uint16_t> heads;
  for (int i = 0; i < 24; ++i) {
    sent.push_back(make_frame(kBroadcast, 60 + static_cast<size_t>(i) * 37, static_cast<uint8_t>(i)));
    if (i % 5 == 3) {  // a frame in two buffers now and then: the fast path stops there
      std::vector<Buf> bufs;
      const uint64_t hg = alloc(kNetHdrSize);
      ASSERT_TRUE(mem->write(hg, h).has_value());
      const uint64_t fg = alloc(static_cast<uint32_t>(sent.back().size()));
      ASSERT_TRUE(mem->write(fg, sent.back()).has_value());
      bufs.push_back(Buf{hg, kNetHdrSize, false});
      bufs.push_back(Buf{fg, static_cast<uint32_t>(sent.back().size()), false});
      auto head = queues[1]->drv->add_chain(bufs);
      ASSERT_TRUE(head.has_value());
      heads.push_back(*head);
    } else {
      heads.push_back(queue_tx_one(1, h, sent.back()));
    }
  }
  kick(1);
  for (size_t i = 0; i < sent.size(); ++i) {
    auto got = guest_recv(0);
    ASSERT_TRUE(got.has_value()) << "frame " << i;
    EXPECT_EQ(got->frame, sent[i]) << "frame " << i;
    EXPECT_EQ(got->hdr.num_buffers, 1);
  }
  for (size_t i = 0; i < heads.size(); ++i) {
    auto u = wait_used(1);
    ASSERT_TRUE(u.has_value()) << "tx chain " << i;
    EXPECT_EQ(u->id, heads[i]) << "tx chain " << i << " out of order";
  }
  EXPECT_EQ(ns.dev->net_metrics().tx_dropped->value(), 0u);
  EXPECT_TRUE(failures().empty());
}

// The port backend copies a run of frames that each fit one cached rx buffer before it returns
// their buffers; a frame that needs several buffers ends the run and takes the merging path, and
// the run after it starts at the right buffer. One burst of mixed sizes into 256-byte buffers.
TEST_F(NetTest, PortRxRunOfOneBufferFramesStopsAtAFrameThatSpansBuffers) {
  NEED_DEVICE(port_config(loopback_ports()));
  const uint64_t f = base_features() | feature_bit(VIRTIO_F_IN_ORDER) |
                     feature_bit(net_feature::kMrgRxbuf);
  ASSERT_TRUE(activate(f, 2).has_value());
  for (int i = 0; i < 48; ++i) post_rx(0, 256);
  kick(0);
  const std::array<uint8_t, kNetHdrSize> h{};
  // Frame bytes + 12-byte header against 256-byte buffers: 1, 1, 3, 1, 1, 1, 4, 1, 2, 1.
  const size_t sizes[] = {60, 100, 600, 60, 244, 61, 1000, 200, 245, 90};
  const uint16_t buffers[] = {1, 1, 3, 1, 1, 1, 4, 1, 2, 1};
  std::vector<std::vector<uint8_t>> sent;
  for (size_t i = 0; i < std::size(sizes); ++i) {
    sent.push_back(make_frame(kBroadcast, sizes[i], static_cast<uint8_t>(i)));
    queue_tx_one(1, h, sent.back());
  }
  kick(1);
  for (size_t i = 0; i < sent.size(); ++i) {
    auto got = guest_recv(0);
    ASSERT_TRUE(got.has_value()) << "frame " << i;
    EXPECT_EQ(got->frame, sent[i]) << "frame " << i;
    EXPECT_EQ(got->hdr.num_buffers, buffers[i]) << "frame " << i;
    EXPECT_EQ(got->lens.size(), buffers[i]) << "frame " << i;
  }
  EXPECT_EQ(ns.dev->net_metrics().rx_dropped->value(), 0u);
  EXPECT_TRUE(failures().empty());
}

// An rx buffer too small for the header goes back unused at once, unless VIRTIO_F_IN_ORDER is
// negotiated and buffers taken before it are still held: returning it would overtake them, so
// the queue fails with the reason.
class NetRxOrderTest : public NetTest, public ::testing::WithParamInterface<bool> {};

TEST_P(NetRxOrderTest, PortRxBufferWithoutRoomForTheHeader) {
  const bool in_order = GetParam();
  NEED_DEVICE(port_config(loopback_ports()));
  uint64_t f = base_features() | feature_bit(net_feature::kMrgRxbuf);
  if (in_order) f |= feature_bit(VIRTIO_F_IN_ORDER);
  ASSERT_TRUE(activate(f, 2).has_value());
  post_rx(0, 256);
  post_rx(0, 256);
  const uint16_t tiny = post_rx(0, 4);
  kick(0);
  const std::array<uint8_t, kNetHdrSize> h{};
  const auto frame = make_frame(kBroadcast, 60, 9);
  send_tx(1, h, frame);
  if (in_order) {
    ASSERT_TRUE(wait_for([&] { return !failures().empty(); }));
    EXPECT_NE(failures()[0].find("IN_ORDER"), std::string::npos) << failures()[0];
  } else {
    auto u = wait_used(0);
    ASSERT_TRUE(u.has_value());
    EXPECT_EQ(u->id, tiny);
    EXPECT_EQ(u->len, 0u);
    auto got = guest_recv(0);
    ASSERT_TRUE(got.has_value());
    EXPECT_EQ(got->frame, frame);
    EXPECT_TRUE(failures().empty());
  }
  EXPECT_EQ(ns.dev->net_metrics().rx_bad_chains->value(), 1u);
}

INSTANTIATE_TEST_SUITE_P(Order, NetRxOrderTest, ::testing::Bool(),
                         [](const auto& p) { return p.param ? "InOrder" : "AnyOrder"; });

// The one-buffer rx path stores the header only where the buffer's bytes differ from it: a
// buffer full of stale bytes still gets a clean header (every field zero, num_buffers 1).
TEST_F(NetTest, PortRxHeaderIsCleanWhateverTheBufferHeld) {
  NEED_DEVICE(port_config(loopback_ports()));
  ASSERT_TRUE(activate(base_features() | feature_bit(net_feature::kMrgRxbuf), 2).has_value());
  for (int i = 0; i < 4; ++i) {
    const uint16_t h = post_rx(0, 2048);
    const std::vector<uint8_t> junk(2048, static_cast<uint8_t>(0xa5 + i));
    ASSERT_TRUE(mem->write(rx_bufs[h], junk).has_value());
  }
  kick(0);
  const std::array<uint8_t, kNetHdrSize> h{};
  for (int i = 0; i < 4; ++i) {
    const auto frame = make_frame(kBroadcast, 60 + static_cast<size_t>(i), static_cast<uint8_t>(i));
    send_tx(1, h, frame);
    auto got = guest_recv(0);
    ASSERT_TRUE(got.has_value()) << "frame " << i;
    EXPECT_EQ(got->frame, frame);
    const VirtioNetHdr want{0, 0, 0, 0, 0, 0, 1};
    EXPECT_EQ(std::memcmp(&got->hdr, &want, sizeof want), 0) << "frame " << i;
    ASSERT_TRUE(wait_used(1).has_value());
  }
  EXPECT_TRUE(failures().empty());
}

}  // namespace
}  // namespace iovirt::virtio
