// Interop: QEMU's vhost-user-blk-pci front-end against the iovirt-vhost daemon, with SeaBIOS's
// virtio-blk driver as the guest (no kernel needed). The image's boot sector, loaded through the
// vhost-user rings, writes itself to sector 2 with int 13h (another request through the rings)
// and prints a marker on the serial port; the test checks the marker and the written sector in
// the image file. This drives QEMU's real message sequence (features, protocol features, config,
// status, memory table, vring num/base/addr/kick/call, enable, GET_VRING_BASE at reset).
// Skipped with a reason where /dev/kvm or qemu-system-x86_64 is missing.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace {

#ifdef IOVIRT_VHOST_BIN
constexpr const char* kQemu = "/usr/bin/qemu-system-x86_64";

// Real-mode boot sector: int 13h AH=03 writes this sector (0x7c00) to CHS 0/0/3 = LBA 2, then
// "VUB\n" (or "ERR\n" if the BIOS reports an error) goes to COM1, then hlt forever.
std::vector<uint8_t> boot_sector() {
  std::vector<uint8_t> c = {
      0x31, 0xC0,        // xor ax, ax
      0x8E, 0xD8,        // mov ds, ax
      0x8E, 0xC0,        // mov es, ax
      0xB4, 0x03,        // mov ah, 3 (write sectors); dl = boot drive from the BIOS
      0xB0, 0x01,        // mov al, 1
      0xB5, 0x00,        // mov ch, 0
      0xB1, 0x03,        // mov cl, 3
      0xB6, 0x00,        // mov dh, 0
      0xBB, 0x00, 0x7C,  // mov bx, 0x7c00
      0xCD, 0x13,        // int 13h
      0x72, 0x12,        // jc error (the 18 bytes below)
  };
  auto print = [&](const char* s) {
    c.insert(c.end(), {0xBA, 0xF8, 0x03});  // mov dx, 0x3f8
    for (const char* p = s; *p != 0; ++p) {
      c.push_back(0xB0);  // mov al, imm8
      c.push_back(static_cast<uint8_t>(*p));
      c.push_back(0xEE);  // out dx, al
    }
    c.insert(c.end(), {0xF4, 0xEB, 0xFD});  // hlt; jmp hlt
  };
  print("VUB\n");
  print("ERR\n");
  c.resize(510, 0);
  c.push_back(0x55);
  c.push_back(0xAA);
  return c;
}

pid_t spawn(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));  // NOLINT
  argv.push_back(nullptr);
  pid_t pid = -1;
  if (::posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0) return -1;
  return pid;
}

int wait_exit(pid_t pid) {
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// POSIX I/O: <fstream> trips g++ 12's -Wnull-dereference at -O2.
std::string slurp(const std::string& path) {
  std::string out;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  char buf[256];
  ssize_t n = 0;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

TEST(VhostUserQemu, SeabiosBootsAndWritesThroughIovirtVhostBlk) {
  if (::access("/dev/kvm", R_OK | W_OK) != 0) GTEST_SKIP() << "no usable /dev/kvm";
  if (::access(kQemu, X_OK) != 0) GTEST_SKIP() << kQemu << " not installed (qemu-system-x86)";
  char tmpl[] = "/var/tmp/iovirt-vuq-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::string image = dir + "/disk.img";
  const std::string sock = dir + "/blk.sock";
  const std::string serial = dir + "/serial.txt";
  const auto mbr = boot_sector();
  {
    const int fd = ::open(image.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, 8 << 20), 0);
    ASSERT_EQ(::pwrite(fd, mbr.data(), mbr.size(), 0), 512);
    ::close(fd);
  }
  const pid_t daemon =
      spawn({IOVIRT_VHOST_BIN, "blk", "--socket", sock, "--file", image, "--queues", "2"});
  ASSERT_GT(daemon, 0);
  for (int i = 0; i < 500 && !std::filesystem::exists(sock); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_TRUE(std::filesystem::exists(sock)) << "iovirt-vhost did not create its socket";

  const pid_t qemu = spawn({kQemu, "-machine", "q35,accel=kvm", "-m", "128M", "-nodefaults",
                            "-object", "memory-backend-memfd,id=mem,size=128M,share=on",
                            "-numa", "node,memdev=mem", "-chardev",
                            "socket,id=c0,path=" + sock, "-device",
                            "vhost-user-blk-pci,chardev=c0,num-queues=2,bootindex=1",
                            "-display", "none", "-monitor", "none", "-serial",
                            "file:" + serial});
  ASSERT_GT(qemu, 0);
  std::string out;
  for (int i = 0; i < 600 && out.find('\n') == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    out = slurp(serial);
  }
  ::kill(qemu, SIGTERM);
  wait_exit(qemu);
  ::kill(daemon, SIGTERM);
  EXPECT_EQ(wait_exit(daemon), 0) << "iovirt-vhost did not exit cleanly";

  EXPECT_EQ(out, "VUB\n") << "the boot sector did not run or its int 13h write failed";
  std::vector<uint8_t> sector2(512);
  const int fd = ::open(image.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(::pread(fd, sector2.data(), 512, 2 * 512), 512);
  ::close(fd);
  EXPECT_EQ(sector2, mbr) << "the guest's write did not reach the image";
  std::filesystem::remove_all(dir);
}
#endif

}  // namespace
