// Exits of tiny 64-bit guests reach the right place: port I/O and MMIO exits are dispatched to
// the device a Bus maps there, ioeventfd doorbells complete in the kernel without an exit, and an
// irqfd raises an MSI the guest's IDT handler sees. See tiny_guest.hpp for the guest's setup.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "iovirt/core/eventfd.hpp"
#include "tiny_guest.hpp"

namespace iovirt::tiny {
namespace {

using Bytes = std::vector<uint8_t>;

TEST_F(TinyGuestTest, PioExitsReachTheDeviceMappedAtThePortAndReadsReturnItsValue) {
  auto t = make_tiny_vm(kvm());
  ASSERT_TRUE(t) << t.error().message();
  RecordingDevice dev_a;        // ports 0x500..0x507
  RecordingDevice dev_b(0xc3);  // ports 0x600..0x603, reads return 0xc3
  Bus pio("pio"), mmio("mmio");
  ASSERT_TRUE(pio.insert(0x500, 8, &dev_a));
  ASSERT_TRUE(pio.insert(0x600, 4, &dev_b));
  constexpr uint64_t kResult = kData;
  Asm a;
  a.mov_edx(0x502).mov_al(0x5a).out_dx_al();          // 1-byte write 0x5a to port 0x502
  a.mov_edx(0x504).mov_eax(0x11223344).out_dx_eax();  // 4-byte write to port 0x504
  a.mov_edx(0x601).in_al_dx();                        // 1-byte read from port 0x601
  a.mov_edx(0x503).out_dx_al();                       // echo what was read to port 0x503
  a.mov_ebx(kResult).mov_mem_rbx_al();                // and store it in guest memory
  a.done();
  ASSERT_TRUE(t->load(kCode, a));

  RunResult r = run_guest(*t, pio, mmio);

  ASSERT_TRUE(r.done) << r.failure;
  EXPECT_EQ(dev_a.log(),
            (std::vector<Access>{
                {true, 2, {0x5a}}, {true, 4, {0x44, 0x33, 0x22, 0x11}}, {true, 3, {0xc3}}}));
  EXPECT_EQ(dev_b.log(), (std::vector<Access>{{false, 1, {0xc3}}}));
  EXPECT_EQ(t->peek<uint8_t>(kResult), 0xc3);
}

TEST_F(TinyGuestTest, MmioExitsReachTheDeviceMappedAtTheAddressAndReadsReturnItsValue) {
  auto t = make_tiny_vm(kvm());
  ASSERT_TRUE(t) << t.error().message();
  RecordingDevice dev_a;              // [kMmioBase, +4 KiB)
  RecordingDevice dev_b(0x12345678);  // [kMmioBase + 8 KiB, +4 KiB)
  Bus pio("pio"), mmio("mmio");
  ASSERT_TRUE(mmio.insert(kMmioBase, 0x1000, &dev_a));
  ASSERT_TRUE(mmio.insert(kMmioBase + 0x2000, 0x1000, &dev_b));
  constexpr uint64_t kResult = kData;
  Asm a;
  a.mov_ebx(kMmioBase + 0x10).mov_eax(0xdeadbeef).mov_mem_rbx_eax();  // 4-byte store
  a.mov_ebx(kMmioBase + 0x21).mov_al(0x7e).mov_mem_rbx_al();          // 1-byte store
  a.mov_ebx(kMmioBase + 0x2008).mov_eax_mem_rbx();                    // 4-byte load from dev_b
  a.mov_ebx(kResult).mov_mem_rbx_eax();                               // keep what was read
  a.done();
  ASSERT_TRUE(t->load(kCode, a));

  RunResult r = run_guest(*t, pio, mmio);

  ASSERT_TRUE(r.done) << r.failure;
  EXPECT_EQ(dev_a.log(),
            (std::vector<Access>{{true, 0x10, {0xef, 0xbe, 0xad, 0xde}}, {true, 0x21, {0x7e}}}));
  EXPECT_EQ(dev_b.log(), (std::vector<Access>{{false, 8, {0x78, 0x56, 0x34, 0x12}}}));
  EXPECT_EQ(t->peek<uint32_t>(kResult), 0x12345678u);
}

// The doorbell loop: N `out dx, al` to kDoorbellPort, then M `mov [rbx], eax` to kDoorbellGpa.
constexpr uint16_t kDoorbellPort = 0x520;
constexpr uint64_t kDoorbellGpa = kMmioBase + 0x4000;
constexpr uint32_t kPioKicks = 5;
constexpr uint32_t kMmioKicks = 7;

Asm doorbell_guest() {
  Asm a;
  a.mov_edx(kDoorbellPort).mov_ecx(kPioKicks);
  const size_t pio_loop = a.here();
  a.out_dx_al().dec_ecx().jnz_back(pio_loop);
  a.mov_ebx(kDoorbellGpa).mov_ecx(kMmioKicks);
  const size_t mmio_loop = a.here();
  a.mov_mem_rbx_eax().dec_ecx().jnz_back(mmio_loop);
  a.done();
  return a;
}

TEST_F(TinyGuestTest, IoeventfdDoorbellsCountEveryKickWithoutAnExitToUserspace) {
  auto t = make_tiny_vm(kvm());
  ASSERT_TRUE(t) << t.error().message();
  auto pio_kick = EventFd::create();
  auto mmio_kick = EventFd::create();
  ASSERT_TRUE(pio_kick && mmio_kick);
  ASSERT_TRUE(
      t->vm.register_ioeventfd(pio_kick->fd(), {.addr = kDoorbellPort, .len = 1, .pio = true}));
  ASSERT_TRUE(t->vm.register_ioeventfd(mmio_kick->fd(), {.addr = kDoorbellGpa, .len = 4}));
  ASSERT_TRUE(t->load(kCode, doorbell_guest()));
  Bus pio("pio"), mmio("mmio");

  RunResult r = run_guest(*t, pio, mmio);

  ASSERT_TRUE(r.done) << r.failure;
  EXPECT_EQ(r.pio_exits.count(kDoorbellPort), 0u) << "doorbell port exited to userspace";
  EXPECT_EQ(r.mmio_exits.count(kDoorbellGpa), 0u) << "doorbell address exited to userspace";
  EXPECT_EQ(r.pio_exits[kDonePort], 1u);
  auto pio_count = pio_kick->read();
  auto mmio_count = mmio_kick->read();
  ASSERT_TRUE(pio_count && mmio_count);
  EXPECT_EQ(*pio_count, kPioKicks);
  EXPECT_EQ(*mmio_count, kMmioKicks);
}

// The control for the test above: the same guest without ioeventfds exits once per kick, so
// the exit counting there can tell the two apart.
TEST_F(TinyGuestTest, WithoutIoeventfdEveryDoorbellKickExitsToUserspace) {
  auto t = make_tiny_vm(kvm());
  ASSERT_TRUE(t) << t.error().message();
  ASSERT_TRUE(t->load(kCode, doorbell_guest()));
  Bus pio("pio"), mmio("mmio");

  RunResult r = run_guest(*t, pio, mmio);

  ASSERT_TRUE(r.done) << r.failure;
  EXPECT_EQ(r.pio_exits[kDoorbellPort], kPioKicks);
  EXPECT_EQ(r.mmio_exits[kDoorbellGpa], kMmioKicks);
}

// An ioeventfd with datamatch fires only for its value; other values still exit.
TEST_F(TinyGuestTest, IoeventfdWithDatamatchIgnoresOtherValues) {
  auto t = make_tiny_vm(kvm());
  ASSERT_TRUE(t) << t.error().message();
  auto kick = EventFd::create();
  ASSERT_TRUE(kick);
  ASSERT_TRUE(t->vm.register_ioeventfd(
      kick->fd(), {.addr = kDoorbellPort, .len = 1, .pio = true, .datamatch = true, .data = 0x2a}));
  Asm a;
  a.mov_edx(kDoorbellPort);
  a.mov_al(0x2a).out_dx_al();  // matches: completes in the kernel
  a.mov_al(0x01).out_dx_al();  // does not match: exits
  a.mov_al(0x2a).out_dx_al();  // matches
  a.done();
  ASSERT_TRUE(t->load(kCode, a));
  RecordingDevice port;
  Bus pio("pio"), mmio("mmio");
  ASSERT_TRUE(pio.insert(kDoorbellPort, 1, &port));

  RunResult r = run_guest(*t, pio, mmio);

  ASSERT_TRUE(r.done) << r.failure;
  auto count = kick->read();
  ASSERT_TRUE(count);
  EXPECT_EQ(*count, 2u);
  EXPECT_EQ(port.log(), (std::vector<Access>{{true, 0, {0x01}}}));
}

// The harness itself: a guest that never exits again is kicked out of KVM_RUN by the watchdog
// and reported, instead of hanging the test binary.
TEST_F(TinyGuestTest, HungGuestIsStoppedByTheWatchdogAndReported) {
  auto t = make_tiny_vm(kvm());
  ASSERT_TRUE(t) << t.error().message();
  Asm a;
  a.jmp_back(a.here());  // jmp $ (EB FE), forever at CPL 3 without an exit
  ASSERT_TRUE(t->load(kCode, a));
  Bus pio("pio"), mmio("mmio");

  RunResult r = run_guest(*t, pio, mmio, 1000, std::chrono::seconds(1));

  EXPECT_FALSE(r.done);
  EXPECT_NE(r.failure.find("watchdog"), std::string::npos) << r.failure;
  EXPECT_NE(r.failure.find("rip 0x10000"), std::string::npos) << r.failure;
}

}  // namespace
}  // namespace iovirt::tiny
