// iovirt's vhost-user front-end against its own back-end daemon, iovirt-vhost blk, killed with
// SIGKILL and started again — with the split ring and with the packed ring. The test plays the
// guest driver on a memfd GuestMemory. The rings run long enough to wrap several times, then the
// daemon is frozen (SIGSTOP) with requests queued, killed, and more requests are queued while no
// back-end exists. A new daemon must resume each ring exactly where the old one stopped: a split
// ring from the used index in guest memory and the inflight area, a packed ring — whose restore
// point is nowhere in guest memory — from the inflight area alone. Every request completes once
// and the file holds every write.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "driven_queue.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/virtio/blk_request.hpp"
#include "iovirt/virtio/device.hpp"
#include "iovirt/virtio/ring.hpp"
#include "iovirt/virtio/vhost_user/frontend.hpp"

namespace iovirt::virtio {
namespace {

using testing::Buf;
using testing::DrivenDevice;
using testing::DrivenQueue;

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kImageSize = 4 * kMiB;
constexpr uint64_t kRingBase = 0x10000;
constexpr uint16_t kQueueSize = 16;
constexpr uint64_t kData = 0x200000;  // request i's 512 bytes at kData + 512 * i
constexpr uint64_t kHdrs = 0x100000;  // request i's header and status at kHdrs + 64 * i

class IovirtVhostRestartTest : public ::testing::TestWithParam<bool> {  // param: packed ring
 protected:
  void SetUp() override {
#ifndef IOVIRT_VHOST_BIN
    GTEST_SKIP() << "iovirt-vhost is not part of this build";
#else
    bin_ = IOVIRT_VHOST_BIN;
#endif
    char dir[] = "/var/tmp/iovirt-restart-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    image_ = dir_ + "/disk.img";
    socket_ = dir_ + "/blk.sock";
    int fd = ::open(image_.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(kImageSize)), 0);
    ::close(fd);
    const RegionSpec r[] = {{0, 8 * kMiB}};
    auto m = GuestMemory::create(r);
    ASSERT_TRUE(m) << m.error().what();
    mem_.emplace(std::move(*m));
  }
  void TearDown() override {
    frontend_.reset();
    stop_daemon(SIGKILL);
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  void start_daemon() {
    ::unlink(socket_.c_str());
    pid_ = ::fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {
      int null = ::open("/dev/null", O_WRONLY);
      ::dup2(null, STDOUT_FILENO);
      ::execl(bin_.c_str(), bin_.c_str(), "blk", "--socket", socket_.c_str(), "--file",
              image_.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    for (int i = 0; i < 400 && ::access(socket_.c_str(), F_OK) != 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_EQ(::access(socket_.c_str(), F_OK), 0) << "iovirt-vhost did not create " << socket_;
  }
  void stop_daemon(int sig) {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGCONT);
    ::kill(pid_, sig);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  void connect_and_activate(bool packed) {
    vhost_user::FrontendOptions o;
    o.socket = socket_;
    o.name = "blk0";
    o.device_id = kDeviceIdBlock;
    o.queue_size = kQueueSize;
    o.packed = packed;
    o.backoff_first_ms = 20;
    o.backoff_max_ms = 100;
    auto f = vhost_user::Frontend::connect(o, metrics_);
    ASSERT_TRUE(f) << f.error().what();
    frontend_ = std::move(*f);
    ASSERT_EQ(has(frontend_->features(), VIRTIO_F_RING_PACKED), packed)
        << "iovirt-vhost offers RING_PACKED and INFLIGHT_SHMFD: packed=on must get the packed ring";
    uint64_t features = frontend_->features() & ~feature_bit(VIRTIO_F_EVENT_IDX);
    ASSERT_TRUE(frontend_->negotiate(features));
    auto q = dev_.add_queue(*mem_, kQueueSize, kRingBase, packed);
    ASSERT_TRUE(q) << q.error().what();
    q_ = *q;
    ASSERT_TRUE(dev_.activate(*frontend_, *mem_, features));
  }

  static std::vector<uint8_t> pattern(uint32_t seq) {
    std::vector<uint8_t> v(512);
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<uint8_t>(seq * 7 + i * 13 + 1);
    return v;
  }
  // Queues write number `seq` (512 bytes of pattern(seq) to sector seq) and kicks. Slots cycle
  // through kQueueSize request buffers, so at most kQueueSize may be outstanding.
  void submit(uint32_t seq) {
    const uint64_t slot = seq % kQueueSize;
    const uint64_t hdr = kHdrs + 64 * slot;
    const uint64_t data = kData + 512 * slot;
    ASSERT_TRUE(mem_->write_obj(hdr, blk::BlkReqHeader{blk::VIRTIO_BLK_T_OUT, 0, seq}));
    ASSERT_TRUE(mem_->write_obj(hdr + 16, uint8_t{0xee}));
    ASSERT_TRUE(mem_->write(data, pattern(seq)));
    const Buf bufs[] = {{hdr, 16, false}, {data, 512, false}, {hdr + 16, 1, true}};
    auto id = q_->add_and_kick(bufs);
    ASSERT_TRUE(id) << id.error().what();
    outstanding_.insert(*id);
  }
  // Takes used buffers until none is outstanding (bounded). A buffer completed twice, or one
  // never submitted, fails the test.
  void wait_all(std::chrono::seconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!outstanding_.empty() && std::chrono::steady_clock::now() < deadline) {
      for (;;) {
        auto u = q_->take_used();
        ASSERT_TRUE(u) << u.error().what();
        if (!*u) break;
        ASSERT_EQ(outstanding_.erase((*u)->id), 1u) << "buffer " << (*u)->id << " completed twice";
      }
      dev_.wait_call(50);
    }
    EXPECT_TRUE(outstanding_.empty()) << outstanding_.size() << " request(s) never completed";
  }
  std::vector<uint8_t> sector(uint32_t seq) {
    std::vector<uint8_t> v(512);
    int fd = ::open(image_.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_EQ(::pread(fd, v.data(), v.size(), static_cast<off_t>(seq) * 512), 512);
    ::close(fd);
    return v;
  }

  std::string bin_, dir_, image_, socket_;
  pid_t pid_ = -1;
  MetricsRegistry metrics_;
  std::optional<GuestMemory> mem_;
  DrivenDevice dev_;  // before the front-end, which points into it
  DrivenQueue* q_ = nullptr;
  std::unique_ptr<vhost_user::Frontend> frontend_;
  std::set<uint16_t> outstanding_;
};

TEST_P(IovirtVhostRestartTest, RingsResumeExactlyAfterTheDaemonIsKilledAndStartedAgain) {
  const bool packed = GetParam();
  start_daemon();
  connect_and_activate(packed);
  uint32_t seq = 0;
  // 40 requests of 3 descriptors through a 16-entry ring: the packed ring's wrap counters flip
  // several times, so a restore that lost them would stall or fault.
  for (int round = 0; round < 10; ++round) {
    for (int k = 0; k < 4; ++k) submit(seq++);
    wait_all(std::chrono::seconds(10));
    ASSERT_TRUE(outstanding_.empty());
  }
  // Frozen with two requests queued, then killed: the new daemon must serve them.
  ASSERT_EQ(::kill(pid_, SIGSTOP), 0);
  submit(seq++);
  submit(seq++);
  stop_daemon(SIGKILL);
  for (int i = 0; i < 300 && frontend_->connected(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_FALSE(frontend_->connected()) << "the front-end did not notice the daemon's death";
  submit(seq++);  // the guest goes on while no back-end exists
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  start_daemon();
  wait_all(std::chrono::seconds(15));
  ASSERT_TRUE(outstanding_.empty()) << "queued requests did not complete after the restart";
  for (int i = 0; i < 300 && !frontend_->connected(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(frontend_->connected());
  EXPECT_EQ(frontend_->reconnects(), 1u);
  // And the ring goes on.
  for (int round = 0; round < 3; ++round) {
    for (int k = 0; k < 4; ++k) submit(seq++);
    wait_all(std::chrono::seconds(10));
  }
  for (uint32_t s = 0; s < seq; ++s) EXPECT_EQ(sector(s), pattern(s)) << "sector " << s;
  EXPECT_EQ(dev_.failure(), "");
}

INSTANTIATE_TEST_SUITE_P(Rings, IovirtVhostRestartTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return i.param ? "Packed" : "Split";
                         });

}  // namespace
}  // namespace iovirt::virtio
