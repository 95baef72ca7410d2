// The DPDK PacketPort against a real EAL and real PMDs: net_ring vdevs, whose queue i transmits
// into the ring that queue i receives from (a per-queue loopback), in --no-huge --no-pci
// --no-shconf mode so the tests need no hugepages and no set-up. The EAL can be initialised once
// per process: ctest runs each test in its own process; run directly, the tests share one EAL
// (the bad-arguments test then skips unless it runs first).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <latch>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "iovirt/virtio/dpdk_port.hpp"

namespace iovirt::virtio {
namespace {

// `-l` names a CPU this process may run on (a CI container may not have CPU 0).
std::string first_cpu() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) return std::to_string(c);
  }
  return "0";
}

// IOVIRT_DPDK_TEST_EAL replaces the EAL arguments (keep --vdev=net_ring0), e.g. to run the
// tests on hugepages: "-l 0 --in-memory -m 256 --no-pci --vdev=net_ring0".
std::string eal_args() {
  if (const char* env = std::getenv("IOVIRT_DPDK_TEST_EAL"); env != nullptr && *env != 0)
    return env;
  std::string s = "-l ";
  s += first_cpu();
  s += " --no-huge -m 128 --no-pci --no-shconf --no-telemetry --vdev=net_ring0";
  return s;
}

std::string spec(const std::string& tail = ";port=net_ring0") {
  std::string s = eal_args();
  s += tail;
  return s;
}

// Frame `i` of stream `tag`: its length varies over 60..1514 and every byte depends on both.
uint32_t frame_len(uint32_t tag, uint32_t i) {
  return 60 + (i * 97 + tag * 13) % (1514 - 60 + 1);
}
uint8_t frame_byte(uint32_t tag, uint32_t i, uint32_t off) {
  return static_cast<uint8_t>(tag * 31 + i * 7 + off);
}

// Allocates, fills and transmits `n` frames of stream `tag` on `port`.
void send_frames(PacketPort& port, uint32_t tag, uint32_t n) {
  std::vector<PacketBuf> bufs(n);
  ASSERT_EQ(port.alloc(bufs), n);
  for (uint32_t i = 0; i < n; ++i) {
    ASSERT_NE(bufs[i].cookie, nullptr);
    ASSERT_EQ(bufs[i].len, 0u);
    uint32_t len = frame_len(tag, i);
    ASSERT_GE(bufs[i].cap, len);
    for (uint32_t off = 0; off < len; ++off) bufs[i].data[off] = frame_byte(tag, i, off);
    bufs[i].len = len;
  }
  port.transmit(bufs);
}

// Receives exactly `n` frames (net_ring delivers synchronously; the retries are for safety)
// and checks each is frame i of stream `tag`, in order.
void expect_frames(PacketPort& port, uint32_t tag, uint32_t n) {
  std::vector<PacketBuf> bufs(n);
  uint32_t got = 0;
  for (int tries = 0; tries < 1000 && got < n; ++tries)
    got += port.receive(std::span(bufs).subspan(got));
  ASSERT_EQ(got, n);
  for (uint32_t i = 0; i < n; ++i) {
    ASSERT_EQ(bufs[i].len, frame_len(tag, i)) << "frame " << i;
    for (uint32_t off = 0; off < bufs[i].len; ++off)
      ASSERT_EQ(bufs[i].data[off], frame_byte(tag, i, off)) << "frame " << i << " byte " << off;
  }
  port.release(bufs);
  std::vector<PacketBuf> more(8);
  EXPECT_EQ(port.receive(more), 0u) << "more frames than were sent";
}

std::unique_ptr<PacketPort> make_port(const PacketPortFactory& f, uint16_t pair, uint16_t pairs) {
  auto p = f(pair, pairs);
  EXPECT_TRUE(p.has_value()) << (p ? "" : p.error().message());
  return p ? std::move(*p) : nullptr;
}

void expect_one_line_error(const Result<PacketPortFactory>& r, const std::string& needle) {
  ASSERT_FALSE(r.has_value());
  std::string msg = r.error().message();
  EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
}

// First in the file: it needs an EAL that is not up yet.
TEST(DpdkPort, BadEalArgumentsFailWithOneLineNamingThem) {
  if (dpdk_eal_initialised()) GTEST_SKIP() << "the EAL of this process is already up";
  auto r = make_dpdk_port_factory("--no-pci --no-such-eal-option;port=0");
  expect_one_line_error(r,
                        "EAL initialisation failed with arguments '--no-pci --no-such-eal-option'");
  EXPECT_FALSE(dpdk_eal_initialised());
}

TEST(DpdkPort, EalInitKeepsTheCallersCpuAffinity) {
  if (dpdk_eal_initialised()) GTEST_SKIP() << "the EAL of this process is already up";
  cpu_set_t before;
  cpu_set_t after;
  ASSERT_EQ(sched_getaffinity(0, sizeof before, &before), 0);
  auto f = make_dpdk_port_factory(spec());
  ASSERT_TRUE(f.has_value()) << f.error().message();
  ASSERT_EQ(sched_getaffinity(0, sizeof after, &after), 0);
  EXPECT_TRUE(CPU_EQUAL(&before, &after)) << "rte_eal_init pinned the caller";
}

TEST(DpdkPort, FramesLoopBackByteForByteOnEachQueuePair) {
  auto stats = std::make_shared<DpdkPortStats>();
  auto f = make_dpdk_port_factory(spec(), 2, stats);
  ASSERT_TRUE(f.has_value()) << f.error().message();
  auto p0 = make_port(*f, 0, 2);
  auto p1 = make_port(*f, 1, 2);
  ASSERT_TRUE(p0 && p1);
  EXPECT_EQ(p0->rx_wake(), PacketPort::kRxPolled);
  EXPECT_EQ(p0->max_frame(), 2048u);  // RTE_MBUF_DEFAULT_DATAROOM
  EXPECT_NE(p1->describe().find("net_ring0 queue 1"), std::string::npos) << p1->describe();

  // Each pair driven by its own (non-EAL) thread, as the daemon's workers do; 200 frames are
  // more than one burst, so bulk paths loop.
  auto run = [](PacketPort* port, uint32_t tag) {
    EXPECT_EQ(rte_lcore_id(), LCORE_ID_ANY);
    for (uint32_t round = 0; round < 5; ++round) {
      send_frames(*port, tag + round, 200);
      expect_frames(*port, tag + round, 200);
    }
    EXPECT_NE(rte_lcore_id(), LCORE_ID_ANY) << "the worker was not registered with the EAL";
  };
  std::thread t0(run, p0.get(), 100u);
  std::thread t1(run, p1.get(), 200u);
  t0.join();
  t1.join();
  EXPECT_EQ(stats->tx_frames.load(), 2000u);
  EXPECT_EQ(stats->rx_frames.load(), 2000u);
  EXPECT_EQ(stats->tx_dropped.load(), 0u);
  EXPECT_EQ(stats->alloc_failed.load(), 0u);
}

// A reconnecting front-end: activate, leave frames in flight, reset, activate again (with a
// different pair count too). No frame of an activation reaches the next one and no mbuf leaks:
// 40 activations leave 199 frames each behind, more than the whole mempool holds.
TEST(DpdkPort, ReactivationDrainsAndReconfigures) {
  auto stats = std::make_shared<DpdkPortStats>();
  auto f = make_dpdk_port_factory(spec(), 2, stats);
  ASSERT_TRUE(f.has_value()) << f.error().message();
  for (uint32_t cycle = 0; cycle < 40; ++cycle) {
    uint16_t pairs = static_cast<uint16_t>(1 + cycle % 2);
    std::vector<std::unique_ptr<PacketPort>> ports;
    for (uint16_t q = 0; q < pairs; ++q) ports.push_back(make_port(*f, q, pairs));
    ASSERT_TRUE(ports.back()) << "cycle " << cycle;
    PacketPort& last = *ports.back();
    std::vector<PacketBuf> stale(8);
    ASSERT_EQ(last.receive(stale), 0u) << "cycle " << cycle << " got frames of the one before";
    send_frames(last, cycle, 200);
    ASSERT_EQ(stats->alloc_failed.load(), 0u) << "cycle " << cycle << ": mbufs leaked";
    std::vector<PacketBuf> one(1);
    ASSERT_EQ(last.receive(one), 1u);
    EXPECT_EQ(one[0].len, frame_len(cycle, 0));
    EXPECT_EQ(one[0].data[5], frame_byte(cycle, 0, 5));
    last.release(one);
  }
}

TEST(DpdkPort, EmptyAndOversizedFramesAreDroppedOnTransmit) {
  auto stats = std::make_shared<DpdkPortStats>();
  auto f = make_dpdk_port_factory(spec(), 1, stats);
  ASSERT_TRUE(f.has_value()) << f.error().message();
  auto p = make_port(*f, 0, 1);
  ASSERT_TRUE(p);
  std::vector<PacketBuf> bufs(3);
  ASSERT_EQ(p->alloc(bufs), 3u);
  bufs[0].len = 0;
  bufs[1].len = p->max_frame() + 1;
  bufs[2].len = 64;
  std::memset(bufs[2].data, 0xab, 64);
  p->transmit(bufs);
  EXPECT_EQ(stats->tx_bad_len.load(), 2u);
  EXPECT_EQ(stats->tx_frames.load(), 1u);
  std::vector<PacketBuf> rx(4);
  ASSERT_EQ(p->receive(rx), 1u);
  EXPECT_EQ(rx[0].len, 64u);
  EXPECT_EQ(rx[0].data[63], 0xab);
  p->release(std::span(rx).first(1));
}

TEST(DpdkPort, ErrorsAreOneLineAndNameTheFix) {
  ASSERT_TRUE(make_dpdk_port_factory(spec()).has_value());  // the EAL is up from here
  expect_one_line_error(make_dpdk_port_factory(spec(";port=net_nope")),
                        "no ethdev port 'net_nope' (available: 0 net_ring0");
  expect_one_line_error(make_dpdk_port_factory(spec(";port=7")), "no ethdev port '7'");
  expect_one_line_error(make_dpdk_port_factory(spec(";port=net_ring0;colour=blue")),
                        "unknown option 'colour=blue'");
  expect_one_line_error(make_dpdk_port_factory(spec(";port=net_ring0;rxd=lots")),
                        "rxd=lots is not a number");
  // net_ring has 16 queue pairs.
  expect_one_line_error(make_dpdk_port_factory(spec(), 17),
                        "dpdk port net_ring0 supports at most 16 queues; use --queues 16");

  auto f = make_dpdk_port_factory(spec(), 2);
  ASSERT_TRUE(f.has_value()) << f.error().message();
  auto too_many = (*f)(0, 3);
  ASSERT_FALSE(too_many.has_value());
  EXPECT_NE(too_many.error().message().find("at most 2"), std::string::npos);
  auto p0 = make_port(*f, 0, 2);
  ASSERT_TRUE(p0);
  auto again = (*f)(0, 2);
  ASSERT_FALSE(again.has_value());
  EXPECT_NE(again.error().message().find("already has a port"), std::string::npos);
  auto other_count = (*f)(0, 1);
  ASSERT_FALSE(other_count.has_value());
  EXPECT_NE(other_count.error().message().find("running with 2 queue pairs"), std::string::npos);
}

// The EAL is up; a later spec's --vdev is hot-plugged and is a port of its own.
TEST(DpdkPort, LaterSpecHotPlugsItsVdev) {
  auto f0 = make_dpdk_port_factory(spec());
  ASSERT_TRUE(f0.has_value()) << f0.error().message();
  auto f1 = make_dpdk_port_factory("--vdev=net_ring1;port=net_ring1");
  ASSERT_TRUE(f1.has_value()) << f1.error().message();
  auto p0 = make_port(*f0, 0, 1);
  auto p1 = make_port(*f1, 0, 1);
  ASSERT_TRUE(p0 && p1);
  send_frames(*p1, 7, 10);
  std::vector<PacketBuf> none(4);
  EXPECT_EQ(p0->receive(none), 0u) << "net_ring0 received net_ring1's frames";
  expect_frames(*p1, 7, 10);
}

// Workers come and go with every activation; each registers with the EAL on first use and must
// give its lcore id back when it exits, or the EAL's 128 lcore ids run out.
TEST(DpdkPort, ShortLivedWorkersDoNotUseUpLcoreIds) {
  auto f = make_dpdk_port_factory(spec());
  ASSERT_TRUE(f.has_value()) << f.error().message();
  auto p = make_port(*f, 0, 1);
  ASSERT_TRUE(p);
  for (int i = 0; i < 300; ++i) {
    bool registered = false;
    std::thread t([&] {
      std::vector<PacketBuf> bufs(4);
      uint32_t n = p->alloc(bufs);
      registered = rte_lcore_id() != LCORE_ID_ANY;
      p->release(std::span(bufs).first(n));
    });
    t.join();
    ASSERT_TRUE(registered) << "worker " << i << " got no lcore id";
  }
}

// A PMD that scatters a frame over several mbufs (this port never asks for it, but a driver may):
// the frame is dropped and counted, every segment goes back to its pool, the queue goes on.
TEST(DpdkPort, MultiSegmentFramesAreDroppedAndCounted) {
  auto stats = std::make_shared<DpdkPortStats>();
  auto f = make_dpdk_port_factory(spec(), 1, stats);
  ASSERT_TRUE(f.has_value()) << f.error().message();
  auto p = make_port(*f, 0, 1);
  ASSERT_TRUE(p);
  uint16_t port_id = 0;
  ASSERT_EQ(rte_eth_dev_get_port_by_name("net_ring0", &port_id), 0);
  rte_mempool* pool =
      rte_pktmbuf_pool_create("test_multiseg", 63, 0, 0, RTE_MBUF_DEFAULT_BUF_SIZE, SOCKET_ID_ANY);
  ASSERT_NE(pool, nullptr);
  rte_mbuf* head = rte_pktmbuf_alloc(pool);
  rte_mbuf* tail = rte_pktmbuf_alloc(pool);
  ASSERT_TRUE(head && tail);
  ASSERT_NE(rte_pktmbuf_append(head, 1000), nullptr);
  ASSERT_NE(rte_pktmbuf_append(tail, 1000), nullptr);
  ASSERT_EQ(rte_pktmbuf_chain(head, tail), 0);
  ASSERT_EQ(rte_eth_tx_burst(port_id, 0, &head, 1), 1);  // net_ring: into queue 0's ring

  std::vector<PacketBuf> rx(4);
  EXPECT_EQ(p->receive(rx), 0u);
  EXPECT_EQ(stats->rx_multiseg_dropped.load(), 1u);
  EXPECT_EQ(rte_mempool_in_use_count(pool), 0u) << "a segment was not freed";
  send_frames(*p, 3, 2);
  expect_frames(*p, 3, 2);
  rte_mempool_free(pool);
}

// More live workers than the EAL has lcore ids (RTE_MAX_LCORE): the ones that cannot register
// run without a mempool cache, and still allocate, transmit, receive and release correctly.
// (Only they move frames: a registered thread's first get fills its cache with 256 mbufs, and
// 128 caches would empty the pool; a daemon has one worker per queue pair, and the pool is
// sized for their caches.)
TEST(DpdkPort, WorkersBeyondTheEalsLcoreIdsStillWork) {
  auto stats = std::make_shared<DpdkPortStats>();
  auto f = make_dpdk_port_factory(spec(), 1, stats);
  ASSERT_TRUE(f.has_value()) << f.error().message();
  auto p = make_port(*f, 0, 1);
  ASSERT_TRUE(p);
  constexpr int kThreads = RTE_MAX_LCORE + 4;
  std::latch all_registered(kThreads);
  std::atomic<int> unregistered{0};
  std::atomic<int> failures{0};
  std::mutex one_at_a_time;  // the pair's port is driven by one thread at a time
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      p->release({});                    // first use: registers, if an lcore id is left
      all_registered.arrive_and_wait();  // every thread alive at once: the ids are all taken
      if (rte_lcore_id() != LCORE_ID_ANY) return;
      ++unregistered;
      std::lock_guard lock(one_at_a_time);
      auto tag = static_cast<uint32_t>(i);
      send_frames(*p, tag, 3);
      expect_frames(*p, tag, 3);
      if (::testing::Test::HasFailure()) ++failures;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_GT(unregistered.load(), 0) << "expected some workers beyond the lcore ids";
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(stats->alloc_failed.load(), 0u);
  EXPECT_EQ(stats->rx_frames.load(), 3u * static_cast<unsigned>(unregistered.load()));
}

// ---- net_tap: a PMD with a real peer (the kernel) that fills its rx rings from our mempool ----

constexpr uint16_t kTestEtherType = 0x88b5;  // IEEE 802 local experimental: no kernel traffic

// Frame `i` of stream `tag`: broadcast, our EtherType, then (tag, i) and a pattern.
std::vector<uint8_t> tap_frame(uint32_t tag, uint32_t i) {
  std::vector<uint8_t> f(frame_len(tag, i));
  std::memset(f.data(), 0xff, 6);
  const std::array<uint8_t, 6> src{0x02, 0, 0, 0, 0, 0x42};
  std::memcpy(f.data() + 6, src.data(), 6);
  f[12] = kTestEtherType >> 8;
  f[13] = kTestEtherType & 0xff;
  f[14] = static_cast<uint8_t>(tag);
  f[15] = static_cast<uint8_t>(i);
  for (size_t off = 16; off < f.size(); ++off)
    f[off] = frame_byte(tag, i, static_cast<uint32_t>(off));
  return f;
}

bool is_test_frame(const uint8_t* p, uint32_t len) {
  return len >= 16 && p[12] == (kTestEtherType >> 8) && p[13] == (kTestEtherType & 0xff);
}

// A packet socket on the kernel side of the tap, seeing only our EtherType.
class KernelSide {
 public:
  explicit KernelSide(const std::string& ifname) {
    ifindex_ = static_cast<int>(if_nametoindex(ifname.c_str()));
    fd_ = ::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(kTestEtherType));
    if (fd_ < 0 || ifindex_ == 0) return;
    sockaddr_ll sll{};
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(kTestEtherType);
    sll.sll_ifindex = ifindex_;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&sll), sizeof sll) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  KernelSide(const KernelSide&) = delete;
  KernelSide& operator=(const KernelSide&) = delete;
  ~KernelSide() {
    if (fd_ >= 0) ::close(fd_);
  }
  [[nodiscard]] bool ok() const { return fd_ >= 0; }

  bool send(const std::vector<uint8_t>& frame) {
    sockaddr_ll sll{};
    sll.sll_family = AF_PACKET;
    sll.sll_ifindex = ifindex_;
    sll.sll_halen = 6;
    std::memset(sll.sll_addr, 0xff, 6);
    return ::sendto(fd_, frame.data(), frame.size(), 0, reinterpret_cast<sockaddr*>(&sll),
                    sizeof sll) == static_cast<ssize_t>(frame.size());
  }

  // The next frame the kernel received on the tap, or empty after `ms` (a bound, not a timing).
  std::vector<uint8_t> recv(int ms) {
    std::vector<uint8_t> buf(4096);
    for (;;) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, ms) <= 0) return {};
      sockaddr_ll from{};
      socklen_t fl = sizeof from;
      ssize_t n =
          ::recvfrom(fd_, buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&from), &fl);
      if (n <= 0) return {};
      if (from.sll_pkttype == PACKET_OUTGOING) continue;
      buf.resize(static_cast<size_t>(n));
      return buf;
    }
  }

 private:
  int fd_ = -1;
  int ifindex_ = 0;
};

// Both directions through net_tap, over two activations with different queue counts (the PMD is
// stopped, reconfigured and started again as for a reconnecting front-end).
TEST(DpdkPort, NetTapCarriesFramesToAndFromTheKernel) {
  if (::geteuid() != 0 || ::access("/dev/net/tun", R_OK | W_OK) != 0)
    GTEST_SKIP() << "net_tap needs root and /dev/net/tun";
  std::string ifname = "dtio" + std::to_string(::getpid() % 100000);
  std::string tail = " --vdev=net_tap0,iface=";
  tail += ifname;
  tail += ";port=net_tap0";
  auto stats = std::make_shared<DpdkPortStats>();
  auto f = make_dpdk_port_factory(spec(tail), 2, stats);
  ASSERT_TRUE(f.has_value()) << f.error().message();

  for (uint16_t pairs : {uint16_t{2}, uint16_t{1}, uint16_t{2}}) {
    SCOPED_TRACE("pairs " + std::to_string(pairs));
    std::vector<std::unique_ptr<PacketPort>> ports;
    for (uint16_t q = 0; q < pairs; ++q) ports.push_back(make_port(*f, q, pairs));
    ASSERT_TRUE(ports.back());
    KernelSide kernel(ifname);  // the PMD created and raised the interface at start
    ASSERT_TRUE(kernel.ok()) << "packet socket on " << ifname << ": " << std::strerror(errno);

    // DPDK -> kernel: 5 frames from each pair's tx queue, received whole by the kernel.
    constexpr uint32_t kFrames = 5;
    std::vector<std::vector<uint8_t>> expected;
    for (uint16_t q = 0; q < pairs; ++q) {
      std::vector<PacketBuf> bufs(kFrames);
      ASSERT_EQ(ports[q]->alloc(bufs), kFrames);
      for (uint32_t i = 0; i < kFrames; ++i) {
        auto fr = tap_frame(10u * pairs + q, i);
        std::memcpy(bufs[i].data, fr.data(), fr.size());
        bufs[i].len = static_cast<uint32_t>(fr.size());
        expected.push_back(std::move(fr));
      }
      ports[q]->transmit(bufs);
    }
    std::vector<std::vector<uint8_t>> seen;
    while (seen.size() < expected.size()) {
      auto fr = kernel.recv(5000);
      if (fr.empty()) break;
      seen.push_back(std::move(fr));
    }
    std::sort(expected.begin(), expected.end());
    std::sort(seen.begin(), seen.end());
    EXPECT_EQ(seen, expected) << "kernel got " << seen.size() << " of " << expected.size();

    // kernel -> DPDK: the kernel picks the queue; poll them all.
    std::vector<std::vector<uint8_t>> sent;
    for (uint32_t i = 0; i < kFrames; ++i) {
      sent.push_back(tap_frame(100u + pairs, i));
      ASSERT_TRUE(kernel.send(sent.back())) << std::strerror(errno);
    }
    std::vector<std::vector<uint8_t>> got;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (got.size() < sent.size() && std::chrono::steady_clock::now() < deadline) {
      for (auto& port : ports) {
        std::vector<PacketBuf> bufs(32);
        uint32_t n = port->receive(bufs);
        for (uint32_t k = 0; k < n; ++k)
          if (is_test_frame(bufs[k].data, bufs[k].len))
            got.emplace_back(bufs[k].data, bufs[k].data + bufs[k].len);
        port->release(std::span(bufs).first(n));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::sort(sent.begin(), sent.end());
    std::sort(got.begin(), got.end());
    EXPECT_EQ(got, sent) << "DPDK got " << got.size() << " of " << sent.size();
  }
  EXPECT_EQ(stats->rx_multiseg_dropped.load(), 0u);
  EXPECT_EQ(stats->tx_dropped.load(), 0u);
}

}  // namespace
}  // namespace iovirt::virtio
