// iovirt's vhost-user front-end against a real back-end from Debian: qemu-storage-daemon exporting
// a file as vhost-user-blk. The test plays the guest driver (DrivenQueue: a split ring in a
// memfd GuestMemory), the front-end hands the rings, the memory fds and the kick/call eventfds to
// qemu-storage-daemon, and the bytes are checked in the file. Then the daemon is killed with
// SIGKILL while a request is queued, restarted, and the front-end's reconnect must restore the
// ring so the queued request completes — the guest's transfer survives a back-end crash.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <optional>
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
constexpr uint16_t kQueueSize = 64;

const char* kQsd = "/usr/bin/qemu-storage-daemon";

class QsdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::access(kQsd, X_OK) != 0) GTEST_SKIP() << kQsd << " not installed (apt-get install qemu-system-common)";
    char dir[] = "/var/tmp/iovirt-qsd-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    image_ = dir_ + "/disk.img";
    socket_ = dir_ + "/blk.sock";
    std::vector<uint8_t> fill(kImageSize, 0x5a);
    int fd = ::open(image_.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, fill.data(), fill.size()), static_cast<ssize_t>(fill.size()));
    ::close(fd);
    const RegionSpec r[] = {{0, 8 * kMiB}};
    auto m = GuestMemory::create(r);
    ASSERT_TRUE(m) << m.error().what();
    mem_.emplace(std::move(*m));
  }
  void TearDown() override {
    frontend_.reset();
    stop_qsd();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  void start_qsd() {
    ::unlink(socket_.c_str());
    pid_ = ::fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {
      const std::string blockdev = "driver=file,node-name=disk0,filename=" + image_;
      const std::string exp = "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=" +
                              socket_ + ",writable=on";
      int null = ::open("/dev/null", O_WRONLY);
      ::dup2(null, STDOUT_FILENO);
      ::execl(kQsd, kQsd, "--blockdev", blockdev.c_str(), "--export", exp.c_str(),
              static_cast<char*>(nullptr));
      ::_exit(127);
    }
    // Ready when the socket exists.
    for (int i = 0; i < 200 && ::access(socket_.c_str(), F_OK) != 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    ASSERT_EQ(::access(socket_.c_str(), F_OK), 0) << "qemu-storage-daemon did not create " << socket_;
  }
  void stop_qsd(int sig = SIGTERM) {
    if (pid_ <= 0) return;
    ::kill(pid_, sig);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  void connect_and_activate() {
    vhost_user::FrontendOptions o;
    o.socket = socket_;
    o.name = "blk0";
    o.device_id = kDeviceIdBlock;
    o.queue_size = kQueueSize;
    o.backoff_first_ms = 20;
    o.backoff_max_ms = 100;
    auto f = vhost_user::Frontend::connect(o, metrics_);
    ASSERT_TRUE(f) << f.error().what();
    frontend_ = std::move(*f);
    ASSERT_TRUE(has(frontend_->features(), VIRTIO_F_VERSION_1));
    // Capacity from the daemon's GET_CONFIG.
    blk::BlkConfigSpace c{};
    frontend_->read_config(0, std::span<uint8_t>(reinterpret_cast<uint8_t*>(&c), sizeof c));
    EXPECT_EQ(c.capacity, kImageSize / 512);
    const uint64_t features = frontend_->features() & ~feature_bit(VIRTIO_F_EVENT_IDX);
    ASSERT_TRUE(frontend_->negotiate(features));
    auto q = dev_.add_queue(*mem_, kQueueSize, kRingBase, false);
    ASSERT_TRUE(q) << q.error().what();
    q_ = *q;
    ASSERT_TRUE(dev_.activate(*frontend_, *mem_, features));
  }

  // Queues one request (header, data, status) and kicks; returns the status byte's address.
  uint64_t submit(uint32_t type, uint64_t sector, uint64_t data, uint32_t len) {
    const uint64_t hdr = next_;
    const uint64_t status = next_ + 16;
    next_ += 64;
    EXPECT_TRUE(mem_->write_obj(hdr, blk::BlkReqHeader{type, 0, sector}));
    EXPECT_TRUE(mem_->write_obj(status, uint8_t{0xee}));
    const Buf bufs[] = {{hdr, 16, false}, {data, len, type == blk::VIRTIO_BLK_T_IN}, {status, 1, true}};
    EXPECT_TRUE(q_->add_and_kick(bufs));
    return status;
  }
  // Waits (bounded) for one used element, via the call eventfd the back-end signals.
  bool wait_used(std::chrono::seconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      auto e = q_->take_used();
      if (e && e->has_value()) return true;
      dev_.wait_call(100);
    }
    return false;
  }
  std::vector<uint8_t> file_bytes(uint64_t off, size_t len) {
    std::vector<uint8_t> v(len);
    int fd = ::open(image_.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_EQ(::pread(fd, v.data(), len, static_cast<off_t>(off)), static_cast<ssize_t>(len));
    ::close(fd);
    return v;
  }
  std::vector<uint8_t> pattern(size_t len, uint8_t seed) {
    std::vector<uint8_t> v(len);
    for (size_t i = 0; i < len; ++i) v[i] = static_cast<uint8_t>(seed + i * 13 + (i >> 8));
    return v;
  }
  uint8_t byte_at(uint64_t gpa) {
    uint8_t b = 0;
    EXPECT_TRUE(mem_->read(gpa, std::span<uint8_t>(&b, 1)));
    return b;
  }

  std::string dir_, image_, socket_;
  pid_t pid_ = -1;
  MetricsRegistry metrics_;
  std::optional<GuestMemory> mem_;
  DrivenDevice dev_;  // before the front-end, which points into it
  DrivenQueue* q_ = nullptr;
  std::unique_ptr<vhost_user::Frontend> frontend_;
  uint64_t next_ = 0x100000;
};

TEST_F(QsdTest, WriteAndReadBackThroughTheDaemon) {
  start_qsd();
  connect_and_activate();
  const auto data = pattern(4096, 3);
  ASSERT_TRUE(mem_->write(0x200000, data));
  const uint64_t st = submit(blk::VIRTIO_BLK_T_OUT, 8, 0x200000, 4096);
  ASSERT_TRUE(wait_used(std::chrono::seconds(10))) << "write not completed by qemu-storage-daemon";
  EXPECT_EQ(byte_at(st), blk::VIRTIO_BLK_S_OK);
  EXPECT_EQ(file_bytes(8 * 512, 4096), data);
  const uint64_t st2 = submit(blk::VIRTIO_BLK_T_IN, 8, 0x300000, 4096);
  ASSERT_TRUE(wait_used(std::chrono::seconds(10)));
  EXPECT_EQ(byte_at(st2), blk::VIRTIO_BLK_S_OK);
  std::vector<uint8_t> back(4096);
  ASSERT_TRUE(mem_->read(0x300000, back));
  EXPECT_EQ(back, data);
  EXPECT_EQ(dev_.failure(), "");
}

TEST_F(QsdTest, ATransferSurvivesTheDaemonBeingKilledAndRestarted) {
  start_qsd();
  connect_and_activate();
  const auto first = pattern(4096, 1);
  ASSERT_TRUE(mem_->write(0x200000, first));
  submit(blk::VIRTIO_BLK_T_OUT, 0, 0x200000, 4096);
  ASSERT_TRUE(wait_used(std::chrono::seconds(10)));

  stop_qsd(SIGKILL);
  for (int i = 0; i < 200 && frontend_->connected(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_FALSE(frontend_->connected()) << "the front-end did not notice the back-end's death";
  // The guest keeps going: a request queued while no back-end exists.
  const auto second = pattern(8192, 2);
  ASSERT_TRUE(mem_->write(0x200000, second));
  const uint64_t st = submit(blk::VIRTIO_BLK_T_OUT, 64, 0x200000, 8192);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // a few failed reconnects
  start_qsd();
  ASSERT_TRUE(wait_used(std::chrono::seconds(15))) << "the queued write did not complete after restart";
  EXPECT_EQ(byte_at(st), blk::VIRTIO_BLK_S_OK);
  EXPECT_EQ(file_bytes(64 * 512, 8192), second);
  EXPECT_EQ(file_bytes(0, 4096), first);
  // The back-end may complete the queued write as soon as its rings are programmed, i.e. before
  // the monitor thread marks the connection up: wait (bounded) for that.
  for (int i = 0; i < 200 && !frontend_->connected(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(frontend_->connected());
  EXPECT_EQ(frontend_->reconnects(), 1u);
  EXPECT_EQ(dev_.failure(), "");
}

TEST_F(QsdTest, NoBackendIsAOneLineErrorNamingTheSocket) {
  vhost_user::FrontendOptions o;
  o.socket = socket_;
  o.name = "blk0";
  o.device_id = kDeviceIdBlock;
  auto f = vhost_user::Frontend::connect(o, metrics_);
  ASSERT_FALSE(f);
  EXPECT_NE(f.error().what().find(socket_), std::string::npos) << f.error().what();
  EXPECT_EQ(f.error().what().find('\n'), std::string::npos);
}

}  // namespace
}  // namespace iovirt::virtio
