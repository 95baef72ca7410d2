// iovirt's vhost-user back-end daemon (iovirt-vhost net) driven by a real front-end from Debian:
// DPDK's virtio-user PMD in dpdk-testpmd (package dpdk-dev), i.e. DPDK's virtio-net driver, which
// hands iovirt its memory (one memfd, --single-file-segments), its rings and eventfds over the
// socket. What each side counted is compared:
//   - testpmd txonly -> --backend sink: every frame testpmd put on the tx ring was taken and
//     counted by the daemon (tx0 chains == testpmd's TX-packets, exactly), and its bytes;
//   - --backend source -> testpmd rxonly: testpmd received frames, every one of them delivered by
//     the daemon on rx0 (the daemon may have delivered up to one ring more: buffers it filled after
//     testpmd stopped polling, which testpmd never reads);
//   - testpmd io-forward (primed with tx_first) <-> --backend ring-loopback: frames circulate;
//     the daemon took exactly what testpmd sent and delivered exactly what it took, nothing
//     dropped, and the frames in flight are accounted for exactly.
// testpmd's counts come from its "Accumulated forward statistics" (printed by "stop"); the
// daemon's from the per-queue totals it prints when stopped with SIGINT (it must exit 0).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "testpmd_process.hpp"

namespace iovirt::interop {
namespace {

constexpr uint32_t kQueueSize = 256;  // virtio-user's ring size (queue_size= below)
constexpr uint32_t kFrameLen = 64;    // testpmd --txpkts and iovirt's source=LEN

struct QueueTotals {
  uint64_t chains = 0;
  uint64_t bytes = 0;
};

// Param: DPDK's packed ring (virtio-user packed_vq=1) instead of the split ring.
class VirtioUserTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
#ifndef IOVIRT_VHOST_BIN
    GTEST_SKIP() << "iovirt-vhost is not part of this build";
#else
    daemon_bin_ = IOVIRT_VHOST_BIN;
#endif
    if (!testpmd_installed()) GTEST_SKIP() << kTestpmd << " not installed (apt-get install dpdk-dev)";
    char dir[] = "/var/tmp/iovirt-virtio-user-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    socket_ = dir_ + "/net.sock";
    prefix_ = "iovirt-" + std::to_string(::getpid()) + "-" + std::filesystem::path(dir_).filename().string();
  }
  void TearDown() override {
    if (HasFailure()) {
      std::cerr << "--- iovirt-vhost log ---\n" << read_file(dir_ + "/daemon.log");
      std::cerr << "--- testpmd log ---\n" << testpmd_.log();
    }
    testpmd_.kill(SIGKILL);
    if (daemon_ > 0) {
      ::kill(daemon_, SIGKILL);
      ::waitpid(daemon_, nullptr, 0);
    }
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  static std::string read_file(const std::string& path) {
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

  void start_daemon(const std::string& backend) {
    daemon_ = ::fork();
    ASSERT_GE(daemon_, 0);
    if (daemon_ == 0) {
      const std::string log = dir_ + "/daemon.log";
      int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      if (out >= 0) {
        ::dup2(out, STDOUT_FILENO);
        ::dup2(out, STDERR_FILENO);
      }
      ::execl(daemon_bin_.c_str(), daemon_bin_.c_str(), "net", "--socket", socket_.c_str(), "--backend",
              backend.c_str(), "--queue-size", std::to_string(kQueueSize).c_str(),
              static_cast<char*>(nullptr));
      ::_exit(127);
    }
    // The daemon listens before it creates nothing else; the socket file appears at bind, right
    // before listen().
    for (int i = 0; i < 400 && ::access(socket_.c_str(), F_OK) != 0; ++i) {
      int st = 0;
      ASSERT_NE(::waitpid(daemon_, &st, WNOHANG), daemon_)
          << "iovirt-vhost exited at start:\n" << read_file(dir_ + "/daemon.log");
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    ASSERT_EQ(::access(socket_.c_str(), F_OK), 0) << "iovirt-vhost did not create " << socket_;
  }

  // SIGINT: the daemon must exit 0 and print its per-queue totals.
  void stop_daemon() {
    ASSERT_GT(daemon_, 0);
    ::kill(daemon_, SIGINT);
    int st = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    pid_t r = 0;
    while ((r = ::waitpid(daemon_, &st, WNOHANG)) == 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (r != daemon_) {
      ::kill(daemon_, SIGKILL);
      ::waitpid(daemon_, nullptr, 0);
      daemon_ = -1;
      FAIL() << "iovirt-vhost did not exit within 10 s of SIGINT";
    }
    daemon_ = -1;
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0)
        << "iovirt-vhost did not exit 0 on SIGINT (status " << st << ")";
  }

  // "iovirt-vhost: net0 queue 1 (tx0): N chains, B bytes"
  std::optional<QueueTotals> daemon_totals(unsigned queue) {
    const std::string text = read_file(dir_ + "/daemon.log");
    const std::regex re("net0 queue " + std::to_string(queue) + " \\([rt]x0\\): ([0-9]+) chains, ([0-9]+) bytes");
    std::smatch m;
    if (!std::regex_search(text, m, re)) return std::nullopt;
    return QueueTotals{std::stoull(m[1].str()), std::stoull(m[2].str())};
  }
  // "iovirt-vhost: net0 tx dropped N, rx dropped M"
  std::optional<std::pair<uint64_t, uint64_t>> daemon_drops() {
    const std::string text = read_file(dir_ + "/daemon.log");
    const std::regex re("net0 tx dropped ([0-9]+), rx dropped ([0-9]+)");
    std::smatch m;
    if (!std::regex_search(text, m, re)) return std::nullopt;
    return std::pair{std::stoull(m[1].str()), std::stoull(m[2].str())};
  }

  // testpmd with virtio-user on the daemon's socket, interactive; "start" (or start_cmd), run for
  // `run`, "stop" (the forward statistics), a pause for the daemon to finish what is on the rings,
  // then end of input (testpmd stops the port and disconnects).
  void run_testpmd(const std::string& mode, const std::string& start_cmd, std::chrono::milliseconds run) {
    ASSERT_TRUE(testpmd_.start(prefix_,
                               "net_virtio_user0,path=" + socket_ + ",queues=1,queue_size=" +
                                   std::to_string(kQueueSize) + (GetParam() ? ",packed_vq=1" : ""),
                               // --no-flush-rx: "start" would otherwise first read and free,
                               // uncounted, whatever the daemon had already delivered.
                               {"-i", "--no-flush-rx", "--forward-mode=" + mode,
                                "--txpkts=" + std::to_string(kFrameLen)},
                               dir_ + "/testpmd.log"));
    // Interactive testpmd reads commands only once its ports are up (virtio-user connected).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (testpmd_.log().find("testpmd>") == std::string::npos) {
      ASSERT_FALSE(testpmd_.exited()) << "dpdk-testpmd exited before its prompt";
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "no testpmd prompt within 20 s";
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_TRUE(testpmd_.command(start_cmd));
    std::this_thread::sleep_for(run);
    ASSERT_TRUE(testpmd_.command("stop"));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ASSERT_TRUE(testpmd_.stop()) << "dpdk-testpmd did not exit cleanly";
  }

  std::string daemon_bin_, dir_, socket_, prefix_;
  pid_t daemon_ = -1;
  Testpmd testpmd_;
};

TEST_P(VirtioUserTest, SinkTakesExactlyTheFramesTestpmdSent) {
  start_daemon("sink");
  if (HasFatalFailure()) return;
  run_testpmd("txonly", "start", std::chrono::milliseconds(500));
  if (HasFatalFailure()) return;
  stop_daemon();
  if (HasFatalFailure()) return;
  auto sent = testpmd_.forward_stats();
  ASSERT_TRUE(sent) << "no forward statistics in testpmd's output";
  auto tx = daemon_totals(1);
  auto rx = daemon_totals(0);
  ASSERT_TRUE(tx && rx) << "no per-queue totals in iovirt-vhost's output";
  std::cout << "testpmd sent " << sent->tx_packets << ", iovirt-vhost took " << tx->chains << "\n";
  EXPECT_GT(sent->tx_packets, 0u);
  EXPECT_EQ(tx->chains, sent->tx_packets) << "iovirt-vhost took a different number of frames than testpmd sent";
  // The byte counter counts frames, not the 12-byte header in front of each.
  EXPECT_EQ(tx->bytes, tx->chains * kFrameLen);
  EXPECT_EQ(rx->chains, 0u) << "a sink delivers nothing";
  auto drops = daemon_drops();
  ASSERT_TRUE(drops);
  EXPECT_EQ(drops->first, 0u) << "iovirt-vhost dropped tx frames from a well-behaved driver";
}

TEST_P(VirtioUserTest, TestpmdReceivesWhatTheSourceDelivers) {
  start_daemon("source=" + std::to_string(kFrameLen));
  if (HasFatalFailure()) return;
  run_testpmd("rxonly", "start", std::chrono::milliseconds(500));
  if (HasFatalFailure()) return;
  stop_daemon();
  if (HasFatalFailure()) return;
  auto got = testpmd_.forward_stats();
  ASSERT_TRUE(got) << "no forward statistics in testpmd's output";
  auto rx = daemon_totals(0);
  ASSERT_TRUE(rx) << "no per-queue totals in iovirt-vhost's output";
  std::cout << "iovirt-vhost delivered " << rx->chains << ", testpmd received " << got->rx_packets << "\n";
  EXPECT_GT(got->rx_packets, 0u) << "testpmd received nothing from --backend source";
  // Every frame testpmd received was delivered by the daemon; after "stop" testpmd no longer polls
  // rx, and the daemon fills the buffers still posted (at most one ring's worth), which testpmd
  // never reads.
  EXPECT_GE(rx->chains, got->rx_packets);
  EXPECT_LE(rx->chains, got->rx_packets + kQueueSize)
      << "iovirt-vhost reports more frames delivered than testpmd received plus one ring";
  EXPECT_EQ(rx->bytes, rx->chains * kFrameLen);
}

TEST_P(VirtioUserTest, RingLoopbackReturnsEveryFrameTestpmdForwards) {
  start_daemon("ring-loopback");
  if (HasFatalFailure()) return;
  // 4 bursts of 32 frames circulate: testpmd io-forwards every frame it receives back out.
  constexpr uint64_t kInFlight = 4 * 32;
  run_testpmd("io", "start tx_first 4", std::chrono::milliseconds(500));
  if (HasFatalFailure()) return;
  stop_daemon();
  if (HasFatalFailure()) return;
  auto st = testpmd_.forward_stats();
  ASSERT_TRUE(st) << "no forward statistics in testpmd's output";
  auto rx = daemon_totals(0);
  auto tx = daemon_totals(1);
  ASSERT_TRUE(rx && tx) << "no per-queue totals in iovirt-vhost's output";
  std::cout << "testpmd sent " << st->tx_packets << " and received " << st->rx_packets << "; iovirt-vhost took "
            << tx->chains << " and delivered " << rx->chains << "\n";
  EXPECT_GT(st->rx_packets, kInFlight) << "frames did not circulate through ring-loopback";
  EXPECT_EQ(tx->chains, st->tx_packets) << "iovirt-vhost took a different number of frames than testpmd sent";
  // Nothing lost inside the daemon: the rx ring had room for every frame in flight, so after the
  // pause everything it took was delivered.
  EXPECT_EQ(rx->chains, tx->chains) << "iovirt-vhost delivered a different number of frames than it took";
  // Frames are conserved around the loop: testpmd sent what it received plus the 128 it started
  // with, less any its own tx refused; the difference sits unread in the rx ring.
  EXPECT_EQ(st->tx_packets + st->tx_dropped, st->rx_packets + kInFlight);
  EXPECT_EQ(rx->chains - st->rx_packets, kInFlight - st->tx_dropped);
  auto drops = daemon_drops();
  ASSERT_TRUE(drops);
  EXPECT_EQ(drops->first, 0u);
  EXPECT_EQ(drops->second, 0u);
}

INSTANTIATE_TEST_SUITE_P(Rings, VirtioUserTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return i.param ? "Packed" : "Split";
                         });

}  // namespace
}  // namespace iovirt::interop
