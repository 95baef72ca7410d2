// iovirt's vhost-user front-end for virtio-net against a real back-end from Debian: DPDK's net_vhost
// PMD in dpdk-testpmd (package dpdk-dev), forwarding mode "io" on its single port, which sends
// every frame it receives from the guest's tx queue straight back into the guest's rx queue.
//
// The test plays the guest driver (DrivenQueue: split rings in a memfd GuestMemory): it sends
// frames of known, distinct bytes (each behind the 12-byte VERSION_1 virtio_net_hdr, virtio 1.2
// section 5.1.6) on tx queue 1 and must get exactly those frames back, in order, on rx queue 0 —
// which proves the front-end handed DPDK the right memory table, ring addresses, and kick/call
// eventfds, and negotiated a header layout both sides agree on. Then testpmd is killed with SIGKILL
// and restarted; the front-end reconnects by itself, restores the rings from the used indexes, and a
// frame queued while no back-end existed still comes back.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "driven_queue.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/virtio/device.hpp"
#include "iovirt/virtio/net.hpp"
#include "iovirt/virtio/ring.hpp"
#include "iovirt/virtio/vhost_user/frontend.hpp"
#include "testpmd_process.hpp"

namespace iovirt::virtio {
namespace {

using interop::Testpmd;
using testing::Buf;
using testing::DrivenDevice;
using testing::DrivenQueue;

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint16_t kQueueSize = 64;
constexpr uint16_t kRx = 0;
constexpr uint16_t kTx = 1;
constexpr uint64_t kRingBase[2] = {0x10000, 0x20000};  // rx0, tx0
constexpr uint64_t kRxBufBase = 0x100000;
constexpr uint64_t kTxBufBase = 0x200000;
constexpr uint32_t kBufSize = 2048;  // one whole frame per rx buffer (no MRG_RXBUF)
constexpr std::array<uint8_t, 6> kMac = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};

// Frame `seq`: to the guest's MAC, from a made-up one, EtherType 0x88b5 (IEEE local experimental),
// then the sequence number and bytes that depend on it; lengths vary from 60 to 1514.
std::vector<uint8_t> make_frame(uint32_t seq) {
  const size_t len = 60 + (seq * 97) % (1514 - 60 + 1);
  std::vector<uint8_t> f(len);
  std::memcpy(f.data(), kMac.data(), 6);
  const uint8_t src[6] = {0x02, 0x00, 0x00, 0xaa, 0xbb, 0xcc};
  std::memcpy(f.data() + 6, src, 6);
  f[12] = 0x88;
  f[13] = 0xb5;
  std::memcpy(f.data() + 14, &seq, sizeof seq);
  for (size_t i = 18; i < len; ++i) f[i] = static_cast<uint8_t>(seq * 31 + i * 7 + (i >> 8));
  return f;
}

class TestpmdVhostTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!interop::testpmd_installed())
      GTEST_SKIP() << interop::kTestpmd << " not installed (apt-get install dpdk-dev)";
    char dir[] = "/var/tmp/iovirt-testpmd-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    socket_ = dir_ + "/net.sock";
    // Unique per test process and test: parallel ctest runs never share DPDK's runtime directory.
    prefix_ = "iovirt-" + std::to_string(::getpid()) + "-" + std::filesystem::path(dir_).filename().string();
    const RegionSpec r[] = {{0, 8 * kMiB}};
    auto m = GuestMemory::create(r);
    ASSERT_TRUE(m) << m.error().what();
    mem_.emplace(std::move(*m));
  }
  void TearDown() override {
    if (HasFailure() && testpmd_.running()) std::cerr << "--- testpmd log ---\n" << testpmd_.log();
    frontend_.reset();
    testpmd_.kill(SIGKILL);
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // testpmd serving net_vhost0 on socket_ (server: iovirt's front-end dials), io-forwarding its one
  // port to itself. --no-flush-rx: net_vhost accepts the front-end as soon as the port is
  // configured, so the device can come up while testpmd is still checking link status; the
  // forwarding start would then first read and free, unforwarded, the frames already on the tx ring
  // (the ones queued while testpmd was dead, in the restart test: seen in CI as 16 of 20 frames).
  void start_testpmd() {
    ::unlink(socket_.c_str());
    ASSERT_TRUE(testpmd_.start(prefix_, "net_vhost0,iface=" + socket_,
                               {"--forward-mode=io", "--auto-start", "--no-flush-rx"},
                               dir_ + "/testpmd.log"));
  }

  // The socket exists once net_vhost has bound it, possibly before it accepts:
  // dial until the handshake goes through (bounded).
  void connect_frontend() {
    vhost_user::FrontendOptions o;
    o.socket = socket_;
    o.name = "net0";
    o.device_id = kDeviceIdNet;
    o.queues = 1;
    o.queue_size = kQueueSize;
    o.mac = kMac;
    o.packed = packed_;
    o.backoff_first_ms = 20;
    o.backoff_max_ms = 100;
    std::string last;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      ASSERT_FALSE(testpmd_.exited()) << "dpdk-testpmd exited:\n" << testpmd_.log();
      auto f = vhost_user::Frontend::connect(o, metrics_);
      if (f) {
        frontend_ = std::move(*f);
        return;
      }
      last = f.error().what();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    FAIL() << "could not connect to testpmd's net_vhost at " << socket_ << ": " << last << "\n"
           << testpmd_.log();
  }

  // `wanted`: the feature bits the driver acks if offered.
  void activate(uint64_t wanted = feature_bit(VIRTIO_F_VERSION_1)) {
    ASSERT_EQ(frontend_->num_queues(), 2);
    uint8_t mac[6];
    frontend_->read_config(0, mac);
    EXPECT_EQ(0, std::memcmp(mac, kMac.data(), 6)) << "config space MAC is not the one configured";
    ASSERT_TRUE(has(frontend_->features(), VIRTIO_F_VERSION_1));
    const uint64_t features = frontend_->features() & wanted;
    ASSERT_TRUE(frontend_->negotiate(features));
    negotiated_ = features;
    for (uint16_t q : {kRx, kTx}) {  // added in index order: rx0 is queue 0, tx0 queue 1
      auto dq = dev_.add_queue(*mem_, kQueueSize, kRingBase[q], has(features, VIRTIO_F_RING_PACKED));
      ASSERT_TRUE(dq) << dq.error().what();
      q_[q] = *dq;
    }
    // Every rx buffer posted before the device starts, as a driver does (section 5.1.6.3).
    for (uint16_t i = 0; i < kQueueSize; ++i) post_rx(kRxBufBase + uint64_t{i} * kBufSize);
    ASSERT_TRUE(dev_.activate(*frontend_, *mem_, features));
  }

  void post_rx(uint64_t gpa) {
    const Buf b[] = {{gpa, kBufSize, true}};
    auto head = q_[kRx]->add_and_kick(b);
    ASSERT_TRUE(head) << head.error().what();
    rx_buf_[*head] = gpa;
  }

  // Queues frame `seq` (header + frame in one descriptor) if a tx slot is free.
  bool send(uint32_t seq) {
    if (tx_free_.empty()) return false;
    const uint64_t gpa = tx_free_.front();
    const auto frame = make_frame(seq);
    VirtioNetHdr hdr{};  // no checksum offload, no GSO: flags 0, gso_type NONE
    EXPECT_TRUE(mem_->write_obj(gpa, hdr));
    EXPECT_TRUE(mem_->write(gpa + kNetHdrSize, frame));
    const Buf b[] = {{gpa, static_cast<uint32_t>(kNetHdrSize + frame.size()), false}};
    auto head = q_[kTx]->add_and_kick(b);
    if (!head) {
      ADD_FAILURE() << head.error().what();
      return false;
    }
    tx_free_.pop_front();
    tx_buf_[*head] = gpa;
    ++sent_;
    return true;
  }

  // Reclaims completed tx buffers and collects received frames (header checked, then stripped);
  // rx buffers go straight back to the device.
  void reap() {
    for (;;) {
      auto e = q_[kTx]->take_used();
      ASSERT_TRUE(e) << e.error().what();
      if (!*e) break;
      auto it = tx_buf_.find(static_cast<uint16_t>((*e)->id));
      ASSERT_NE(it, tx_buf_.end()) << "tx used element with an id that was never queued: " << (*e)->id;
      tx_free_.push_back(it->second);
      tx_buf_.erase(it);
    }
    for (;;) {
      auto e = q_[kRx]->take_used();
      ASSERT_TRUE(e) << e.error().what();
      if (!*e) break;
      auto it = rx_buf_.find(static_cast<uint16_t>((*e)->id));
      ASSERT_NE(it, rx_buf_.end()) << "rx used element with an id that was never posted: " << (*e)->id;
      const uint64_t gpa = it->second;
      rx_buf_.erase(it);
      const uint32_t len = (*e)->len;
      ASSERT_GE(len, kNetHdrSize) << "rx used length shorter than the virtio-net header";
      ASSERT_LE(len, kBufSize) << "rx used length larger than the buffer posted";
      auto hdr = mem_->read_obj<VirtioNetHdr>(gpa);
      ASSERT_TRUE(hdr);
      EXPECT_EQ(hdr->gso_type, VIRTIO_NET_HDR_GSO_NONE);
      EXPECT_EQ(hdr->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM, 0);
      // Section 5.1.6.4: a frame that fits one buffer is one buffer, merged or not.
      if (has(negotiated_, net_feature::kMrgRxbuf)) {
        EXPECT_EQ(hdr->num_buffers, 1);
      }
      std::vector<uint8_t> frame(len - kNetHdrSize);
      ASSERT_TRUE(mem_->read(gpa + kNetHdrSize, frame));
      received_.push_back(std::move(frame));
      post_rx(gpa);
    }
  }

  // Sends frames [first, first + count) and waits (bounded) until as many frames came back.
  void send_and_collect(uint32_t first, uint32_t count, std::chrono::seconds limit) {
    const size_t want = received_.size() + count;
    uint32_t next = first;
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (received_.size() < want && std::chrono::steady_clock::now() < deadline) {
      // At most one rx ring's worth in flight: testpmd's io forward drops what the rx ring has no
      // buffer for (it does not retry), so more would lose frames whenever this thread is slow to
      // give buffers back (it is, under ASan).
      while (next < first + count && sent_ - received_.size() < kQueueSize && send(next)) ++next;
      dev_.wait_call(20);
      reap();
      if (::testing::Test::HasFatalFailure()) return;
    }
    ASSERT_EQ(received_.size(), want) << "sent " << (next - first) << " of " << count
                                      << " frames; testpmd log:\n" << testpmd_.log();
  }

  void expect_received(uint32_t first, uint32_t count, size_t at) {
    for (uint32_t i = 0; i < count; ++i) {
      const auto want = make_frame(first + i);
      ASSERT_LT(at + i, received_.size());
      const auto& got = received_[at + i];
      ASSERT_EQ(got.size(), want.size()) << "frame " << first + i << ": length differs";
      ASSERT_TRUE(got == want) << "frame " << first + i << ": bytes differ";
    }
  }

  void init_tx_pool() {
    for (uint16_t i = 0; i < kQueueSize; ++i) tx_free_.push_back(kTxBufBase + uint64_t{i} * kBufSize);
  }

  std::string dir_, socket_, prefix_;
  Testpmd testpmd_;
  MetricsRegistry metrics_;
  std::optional<GuestMemory> mem_;
  DrivenDevice dev_;  // before the front-end, which points into it
  DrivenQueue* q_[2] = {};
  std::unique_ptr<vhost_user::Frontend> frontend_;
  bool packed_ = false;  // packed=on for the front-end
  std::map<uint16_t, uint64_t> rx_buf_, tx_buf_;  // head -> buffer
  std::deque<uint64_t> tx_free_;
  std::vector<std::vector<uint8_t>> received_;
  size_t sent_ = 0;
  uint64_t negotiated_ = 0;
};

// The driver acks VERSION_1 only (so the 12-byte header): no offloads, no merged rx buffers (each
// frame arrives in one buffer), no EVENT_IDX (every kick and call is sent).
TEST_F(TestpmdVhostTest, FramesComeBackByteForByteThroughTestpmdIoForward) {
  init_tx_pool();
  start_testpmd();
  connect_frontend();
  if (HasFatalFailure()) return;
  activate();
  if (HasFatalFailure()) return;
  // Three times the ring size, so both rings wrap and every descriptor is reused.
  constexpr uint32_t kFrames = 3 * kQueueSize;
  send_and_collect(0, kFrames, std::chrono::seconds(20));
  if (HasFatalFailure()) return;
  expect_received(0, kFrames, 0);
  EXPECT_EQ(dev_.failure(), "");
  EXPECT_TRUE(frontend_->connected());
  // testpmd saw every frame once, in and out.
  ASSERT_TRUE(testpmd_.stop()) << testpmd_.log();
  auto st = testpmd_.forward_stats();
  ASSERT_TRUE(st) << "no forward statistics in testpmd's output:\n" << testpmd_.log();
  EXPECT_EQ(st->rx_packets, kFrames);
  EXPECT_EQ(st->tx_packets, kFrames);
}

// packed=on against DPDK 22.11's net_vhost, which offers RING_PACKED but not INFLIGHT_SHMFD: a
// packed ring could not be restored after a testpmd restart, so the front-end offers the split
// ring (and warns), and frames flow through it.
TEST_F(TestpmdVhostTest, PackedOnWithoutAnInflightAreaGetsTheSplitRing) {
  packed_ = true;
  init_tx_pool();
  start_testpmd();
  connect_frontend();
  if (HasFatalFailure()) return;
  EXPECT_FALSE(has(frontend_->features(), VIRTIO_F_RING_PACKED));
  activate(feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_F_RING_PACKED));
  if (HasFatalFailure()) return;
  EXPECT_FALSE(has(negotiated_, VIRTIO_F_RING_PACKED));
  send_and_collect(0, kQueueSize, std::chrono::seconds(20));
  if (HasFatalFailure()) return;
  expect_received(0, kQueueSize, 0);
  EXPECT_EQ(dev_.failure(), "");
}

// Merged rx buffers negotiated (virtio 1.2 section 5.1.6.3.1): the header keeps its 12 bytes and
// DPDK must say num_buffers = 1 for frames that fit one buffer.
TEST_F(TestpmdVhostTest, FramesComeBackWithMergedRxBuffersNegotiated) {
  init_tx_pool();
  start_testpmd();
  connect_frontend();
  if (HasFatalFailure()) return;
  ASSERT_TRUE(has(frontend_->features(), net_feature::kMrgRxbuf));
  activate(feature_bit(VIRTIO_F_VERSION_1) | feature_bit(net_feature::kMrgRxbuf));
  if (HasFatalFailure()) return;
  ASSERT_TRUE(has(negotiated_, net_feature::kMrgRxbuf));
  constexpr uint32_t kFrames = 2 * kQueueSize;
  send_and_collect(0, kFrames, std::chrono::seconds(20));
  if (HasFatalFailure()) return;
  expect_received(0, kFrames, 0);
  EXPECT_EQ(frontend_->reconnects(), 0u);
  EXPECT_EQ(dev_.failure(), "");
}

// What Linux's virtio_net acks when offered: the MAC and link status (config-space features the
// front-end serves itself) and merged rx buffers. DPDK refuses SET_FEATURES with bits it never
// offered ("received invalid negotiated features"), so this checks the front-end sends only the
// back-end's own bits (found by this test; it failed before the front-end masked them).
TEST_F(TestpmdVhostTest, ALinuxLikeDriverAckingMacStatusAndMergedRxBuffersGetsItsFramesBack) {
  init_tx_pool();
  start_testpmd();
  connect_frontend();
  if (HasFatalFailure()) return;
  ASSERT_TRUE(has(frontend_->features(), net_feature::kMac));
  ASSERT_TRUE(has(frontend_->features(), net_feature::kMrgRxbuf));
  activate(feature_bit(VIRTIO_F_VERSION_1) | feature_bit(net_feature::kMac) |
           feature_bit(net_feature::kStatus) | feature_bit(net_feature::kMrgRxbuf));
  if (HasFatalFailure()) return;
  constexpr uint32_t kFrames = 2 * kQueueSize;
  send_and_collect(0, kFrames, std::chrono::seconds(10));
  if (HasFatalFailure()) return;
  expect_received(0, kFrames, 0);
  EXPECT_EQ(frontend_->reconnects(), 0u);
  EXPECT_EQ(dev_.failure(), "");
}

TEST_F(TestpmdVhostTest, TrafficResumesAfterTestpmdIsKilledAndRestarted) {
  init_tx_pool();
  start_testpmd();
  connect_frontend();
  if (HasFatalFailure()) return;
  activate();
  if (HasFatalFailure()) return;
  send_and_collect(0, 16, std::chrono::seconds(20));
  if (HasFatalFailure()) return;

  testpmd_.kill(SIGKILL);
  for (int i = 0; i < 200 && frontend_->connected(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_FALSE(frontend_->connected()) << "the front-end did not notice the back-end's death";
  // The guest keeps going: frames queued while no back-end exists wait in the tx ring.
  for (uint32_t s = 16; s < 20; ++s) ASSERT_TRUE(send(s));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // a few failed reconnects
  start_testpmd();
  // The 4 queued frames come back once the new testpmd has the rings, then 16 more.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (received_.size() < 20 && std::chrono::steady_clock::now() < deadline) {
    dev_.wait_call(20);
    reap();
    if (HasFatalFailure()) return;
  }
  ASSERT_EQ(received_.size(), 20u) << "frames queued while testpmd was down did not come back; log:\n"
                                   << testpmd_.log();
  send_and_collect(20, 16, std::chrono::seconds(20));
  if (HasFatalFailure()) return;
  expect_received(0, 36, 0);
  for (int i = 0; i < 200 && !frontend_->connected(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(frontend_->connected());
  EXPECT_EQ(frontend_->reconnects(), 1u);
  EXPECT_EQ(dev_.failure(), "");
}

}  // namespace
}  // namespace iovirt::virtio
