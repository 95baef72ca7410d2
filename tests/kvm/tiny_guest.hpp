// Tiny hand-made 64-bit guests on the host's /dev/kvm, built from the core wrappers only
// (Kvm, VmFd, VcpuFd, GuestMemory, Bus): no vmm::Vm, no firmware, no Linux.
//
// The guest starts directly in long mode at CPL 3. That is deliberate: on the PVM ("pagetable
// based virtual machine") KVM of our hosts, guest code at CPL 0 is emulated instruction by
// instruction (~3000x slower) while CPL 3 code runs natively (/work/shared/environment.md). So:
//   - CS/SS are DPL-3 64-bit segments (selectors 0x1b / 0x23),
//   - every page-table entry has the U/S bit set,
//   - 2 MiB pages only: 1 GiB pages triple-fault at the first instruction on this KVM,
//   - addresses >= 2 GiB (the LAPIC at 0xfee00000) are loaded into a register with
//     `mov r32, imm32` (zero-extending) and dereferenced through it: a 32-bit displacement would
//     be sign-extended to 0xffffffff_fee00000.
// Found while writing these tests: RFLAGS.IOPL = 3 set through KVM_SET_REGS is NOT honoured for
// natively running CPL-3 code on PVM (KVM_GET_REGS reads it back, but the CPU pushes RFLAGS with
// IOPL 0 in exception frames, `out` at CPL 3 goes to the I/O permission check and `sti` raises
// #GP). Therefore:
//   - port I/O from CPL 3 is allowed by the TSS I/O permission bitmap (all ports, bits 0),
//     which works on any x86 KVM; IOPL stays 0,
//   - a guest that wants interrupts gets RFLAGS.IF = 1 from the host (KVM_SET_REGS) instead of
//     executing `sti`, and `iretq` at CPL 3 cannot set IF again (see the irqfd tests).
//
// Guest physical map (one 2 MiB memslot at GPA 0; everything else is unbacked = MMIO):
//   0x1000 GDT   0x2000 IDT   0x3000 PML4   0x4000 PDPT   0x5000 PD [0, 1 GiB)
//   0x6000 PD [3 GiB, 4 GiB) (only the LAPIC page)   0x8000 exception stubs
//   0xc000 TSS + I/O bitmap (to 0xe068)   0x10000 test code   0x11000 interrupt handler
//   0x20000 data slots   0x1e0000 RSP0 stack top   0x1f0000 user stack top
#pragma once

#include <gtest/gtest.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "iovirt/core/bus.hpp"
#include "iovirt/core/error.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/core/kvm.hpp"

namespace iovirt::tiny {

// ---- guest physical layout -----------------------------------------------------------------

inline constexpr uint64_t kMemSize = 2ull << 20;
inline constexpr uint64_t kGdt = 0x1000;
inline constexpr uint64_t kIdt = 0x2000;
inline constexpr uint64_t kPml4 = 0x3000;
inline constexpr uint64_t kPdpt = 0x4000;
inline constexpr uint64_t kPdLow = 0x5000;
inline constexpr uint64_t kPdHigh = 0x6000;
inline constexpr uint64_t kStubs = 0x8000;
inline constexpr uint64_t kTss = 0xc000;
inline constexpr uint64_t kCode = 0x10000;
inline constexpr uint64_t kHandler = 0x11000;
inline constexpr uint64_t kData = 0x20000;
inline constexpr uint64_t kKernelStackTop = 0x1e0000;
inline constexpr uint64_t kUserStackTop = 0x1f0000;

inline constexpr uint64_t kLapic = 0xfee00000;
// Unbacked GPAs inside the identity map: accesses there become KVM_EXIT_MMIO (or ioeventfds).
inline constexpr uint64_t kMmioBase = 0x10000000;

// Selectors (RPL 3 for the user ones).
inline constexpr uint16_t kKernelCs = 0x08;
inline constexpr uint16_t kKernelDs = 0x10;
inline constexpr uint16_t kUserCs = 0x1b;
inline constexpr uint16_t kUserDs = 0x23;
inline constexpr uint16_t kTssSel = 0x28;

// Port the guest writes to when it is finished, and the port the exception stubs report on.
inline constexpr uint16_t kDonePort = 0x7f0;
inline constexpr uint16_t kFaultPort = 0x7f8;

// ---- a hand assembler ----------------------------------------------------------------------

// Each method emits the bytes of exactly one instruction; the comment on it is the Intel-syntax
// instruction and its encoding (opcode, ModRM), so a reader can check it against the SDM.
// Only what the tests need; registers are the 32-bit forms (writes zero-extend to 64 bits).
class Asm {
 public:
  size_t here() const { return b_.size(); }
  const std::vector<uint8_t>& bytes() const { return b_; }

  // B8+r id: mov eax, imm32
  Asm& mov_eax(uint32_t v) { return op(0xb8).imm32(v); }
  // B9+r id: mov ecx, imm32
  Asm& mov_ecx(uint32_t v) { return op(0xb9).imm32(v); }
  // BA+r id: mov edx, imm32
  Asm& mov_edx(uint32_t v) { return op(0xba).imm32(v); }
  // BB+r id: mov ebx, imm32  (zero-extends: the way to reach GPAs >= 2 GiB, e.g. the LAPIC)
  Asm& mov_ebx(uint32_t v) { return op(0xbb).imm32(v); }
  // B0 ib: mov al, imm8
  Asm& mov_al(uint8_t v) { return op(0xb0).op(v); }
  // EE: out dx, al
  Asm& out_dx_al() { return op(0xee); }
  // EF: out dx, eax
  Asm& out_dx_eax() { return op(0xef); }
  // EC: in al, dx
  Asm& in_al_dx() { return op(0xec); }
  // ED: in eax, dx
  Asm& in_eax_dx() { return op(0xed); }
  // 88 /r, ModRM 03 (mod 00, reg al, rm rbx): mov byte [rbx], al
  Asm& mov_mem_rbx_al() { return op(0x88).op(0x03); }
  // 8A /r, ModRM 03: mov al, byte [rbx]
  Asm& mov_al_mem_rbx() { return op(0x8a).op(0x03); }
  // 89 /r, ModRM 03: mov dword [rbx], eax
  Asm& mov_mem_rbx_eax() { return op(0x89).op(0x03); }
  // 8B /r, ModRM 03: mov eax, dword [rbx]
  Asm& mov_eax_mem_rbx() { return op(0x8b).op(0x03); }
  // C7 /0 id, ModRM 03: mov dword [rbx], imm32
  Asm& mov_mem_rbx_imm32(uint32_t v) { return op(0xc7).op(0x03).imm32(v); }
  // FF /0, ModRM 03: inc dword [rbx]
  Asm& inc_mem_rbx() { return op(0xff).op(0x03); }
  // 0D id: or eax, imm32
  Asm& or_eax(uint32_t v) { return op(0x0d).imm32(v); }
  // 85 /r, ModRM C0 (mod 11, eax, eax): test eax, eax
  Asm& test_eax_eax() { return op(0x85).op(0xc0); }
  // 31 /r, ModRM C0: xor eax, eax
  Asm& xor_eax_eax() { return op(0x31).op(0xc0); }
  // FF /1, ModRM C9 (mod 11, /1, ecx): dec ecx
  Asm& dec_ecx() { return op(0xff).op(0xc9); }
  // 50+r: push rax / 53: push rbx / 58: pop rax / 5B: pop rbx
  Asm& push_rax() { return op(0x50); }
  Asm& push_rbx() { return op(0x53); }
  Asm& pop_rax() { return op(0x58); }
  Asm& pop_rbx() { return op(0x5b); }
  // F3 90: pause
  Asm& pause() { return op(0xf3).op(0x90); }
  // 48 CF: iretq (REX.W iret)
  Asm& iretq() { return op(0x48).op(0xcf); }
  // 75 cb: jnz rel8 / 74 cb: jz rel8 / EB cb: jmp rel8 -- to an earlier offset from here()
  Asm& jnz_back(size_t target) { return op(0x75).rel8(target); }
  Asm& jz_back(size_t target) { return op(0x74).rel8(target); }
  Asm& jmp_back(size_t target) { return op(0xeb).rel8(target); }

  // The common epilogue: mov edx, kDonePort; out dx, al; then jmp $ should the VMM resume.
  Asm& done() {
    mov_edx(kDonePort).out_dx_al();
    return jmp_back(here());
  }

 private:
  Asm& op(uint8_t v) {
    b_.push_back(v);
    return *this;
  }
  Asm& imm32(uint32_t v) {
    for (int i = 0; i < 4; ++i) b_.push_back(static_cast<uint8_t>(v >> (8 * i)));
    return *this;
  }
  // rel8 is relative to the end of the 2-byte jump.
  Asm& rel8(size_t target) {
    const auto rel = static_cast<long>(target) - static_cast<long>(here() + 1);
    b_.push_back(static_cast<uint8_t>(static_cast<int8_t>(rel)));
    return *this;
  }
  std::vector<uint8_t> b_;
};

// ---- recording bus device ------------------------------------------------------------------

struct Access {
  bool write;
  uint64_t offset;
  std::vector<uint8_t> data;  // bytes written, or bytes returned for a read
  bool operator==(const Access&) const = default;
};

inline std::ostream& operator<<(std::ostream& os, const Access& a) {
  os << (a.write ? "write" : "read") << " @0x" << std::hex << a.offset << " [";
  for (size_t i = 0; i < a.data.size(); ++i) os << (i ? " " : "") << "0x" << unsigned{a.data[i]};
  return os << "]" << std::dec;
}

// Records every access; reads return `read_value` (little-endian, truncated to the width).
class RecordingDevice final : public BusDevice {
 public:
  explicit RecordingDevice(uint64_t read_value = 0) : read_value_(read_value) {}
  void read(uint64_t offset, std::span<uint8_t> data) override {
    for (size_t i = 0; i < data.size(); ++i)
      data[i] = static_cast<uint8_t>(read_value_ >> (8 * (i % 8)));
    std::lock_guard lock(mu_);
    log_.push_back({false, offset, {data.begin(), data.end()}});
  }
  void write(uint64_t offset, std::span<const uint8_t> data) override {
    std::lock_guard lock(mu_);
    log_.push_back({true, offset, {data.begin(), data.end()}});
  }
  std::vector<Access> log() const {
    std::lock_guard lock(mu_);
    return log_;
  }

 private:
  uint64_t read_value_;
  mutable std::mutex mu_;
  std::vector<Access> log_;
};

// ---- the VM --------------------------------------------------------------------------------

struct Options {
  bool irqchip = false;
  // Code segment of the IDT gates. kUserCs: an interrupt arriving at CPL 3 is delivered at
  // CPL 3 (same privilege, no stack switch, the handler runs natively on PVM). kKernelCs:
  // delivered at CPL 0 on TSS.RSP0 (every handler instruction emulated on PVM).
  uint16_t handler_cs = kUserCs;
  // RFLAGS.IF at the first instruction (the guest cannot `sti` at CPL 3 on PVM, see above).
  bool interrupts_enabled = false;
};

enum class GateType : uint8_t {
  Interrupt = 0xe,  // clears RFLAGS.IF on entry
  Trap = 0xf,       // leaves RFLAGS.IF alone
};

struct TinyVm {
  VmFd vm;
  GuestMemory mem;
  VcpuFd vcpu;

  // Copies code to `gpa` (kCode is where the vCPU starts).
  Status load(uint64_t gpa, const Asm& a) const { return mem.write(gpa, a.bytes()); }
  // Points IDT vector `vec` at `handler` through a gate of `type`.
  Status set_gate(uint8_t vec, uint64_t handler, uint16_t cs,
                  GateType type = GateType::Interrupt) const {
    std::array<uint8_t, 16> g{};
    g[0] = static_cast<uint8_t>(handler);
    g[1] = static_cast<uint8_t>(handler >> 8);
    g[2] = static_cast<uint8_t>(cs);
    g[3] = static_cast<uint8_t>(cs >> 8);
    g[4] = 0;                                                        // IST 0: no IST stack
    g[5] = static_cast<uint8_t>(0x80 | static_cast<uint8_t>(type));  // present, DPL 0
    for (int i = 0; i < 6; ++i)
      g[6 + static_cast<size_t>(i)] = static_cast<uint8_t>(handler >> (16 + 8 * i));
    return mem.write(kIdt + uint64_t{vec} * 16, g);
  }
  // Aligned loads/stores of guest RAM that the running guest may access at the same time.
  template <class T>
  T peek(uint64_t gpa) const {
    auto p = mem.host_ptr(gpa, sizeof(T));
    if (!p) return T{};
    return std::atomic_ref<T>(*reinterpret_cast<T*>(*p)).load();
  }
  template <class T>
  void poke(uint64_t gpa, T v) const {
    if (auto p = mem.host_ptr(gpa, sizeof(T)); p)
      std::atomic_ref<T>(*reinterpret_cast<T*>(*p)).store(v);
  }
};

namespace detail {

inline uint64_t seg_desc(uint8_t access, uint8_t flags_hi) {
  // base 0, limit 0xfffff; access byte at bits 40..47, flags (G, D/B, L) at 52..55.
  return 0xffffull | (0xfull << 48) | (uint64_t{access} << 40) | (uint64_t{flags_hi} << 52);
}

inline kvm_segment code_seg(uint16_t sel, uint8_t dpl) {
  kvm_segment s{};
  s.base = 0;
  s.limit = 0xffffffff;
  s.selector = sel;
  s.type = 0xb;  // execute/read, accessed
  s.present = 1;
  s.dpl = dpl;
  s.s = 1;
  s.l = 1;  // 64-bit
  s.db = 0;
  s.g = 1;
  return s;
}

inline kvm_segment data_seg(uint16_t sel, uint8_t dpl) {
  kvm_segment s{};
  s.base = 0;
  s.limit = 0xffffffff;
  s.selector = sel;
  s.type = 0x3;  // read/write, accessed
  s.present = 1;
  s.dpl = dpl;
  s.s = 1;
  s.db = 1;
  s.g = 1;
  return s;
}

// Exception stubs for vectors 0..31: "mov al, vec; mov edx, kFaultPort; out dx, al; jmp $".
// They use the same code segment as the test's handlers (Options::handler_cs), so a guest bug
// is reported as "guest exception N" with the faulting frame on the stack instead of a bare
// triple fault.
inline Status write_exception_stubs(const TinyVm& t, uint16_t cs) {
  for (uint8_t v = 0; v < 32; ++v) {
    Asm a;
    a.mov_al(v).mov_edx(kFaultPort).out_dx_al();
    a.jmp_back(a.here());
    const uint64_t at = kStubs + uint64_t{v} * 16;
    if (auto s = t.load(at, a); !s) return s;
    if (auto s = t.set_gate(v, at, cs); !s) return s;
  }
  return {};
}

}  // namespace detail

inline Result<TinyVm> make_tiny_vm(const Kvm& kvm, const Options& opt = {}) {
  IOVIRT_TRY_CTX(vm, kvm.create_vm(), "tiny guest");
  if (opt.irqchip) {
    if (auto s = vm.create_irqchip(); !s) return std::unexpected(s.error());
  }
  const RegionSpec spec{0, kMemSize};
  IOVIRT_TRY_CTX(mem, GuestMemory::create(std::span(&spec, 1)), "tiny guest");
  if (auto s = vm.set_user_memory_region(0, 0, kMemSize, mem.regions()[0].host); !s)
    return std::unexpected(s.error());
  IOVIRT_TRY_CTX(mmap_size, kvm.vcpu_mmap_size(), "tiny guest");
  IOVIRT_TRY_CTX(vcpu, vm.create_vcpu(0, mmap_size), "tiny guest");
  IOVIRT_TRY_CTX(cpuid, kvm.supported_cpuid(), "tiny guest");
  if (auto s = vcpu.set_cpuid(cpuid); !s) return std::unexpected(s.error());

  TinyVm t{std::move(vm), std::move(mem), std::move(vcpu)};
  const GuestMemory& m = t.mem;
  auto put64 = [&](uint64_t gpa, uint64_t v) { return m.write_obj<uint64_t>(gpa, v); };

  // Page tables: P | RW | U/S on every level (0x7); leaves are 2 MiB pages (PS, 0x80).
  constexpr uint64_t kTable = 0x7, kLeaf2M = 0x87, kPcdPwt = 0x18;
  Status s = put64(kPml4, kPdpt | kTable);
  if (s) s = put64(kPdpt + 0 * 8, kPdLow | kTable);   // [0, 1 GiB)
  if (s) s = put64(kPdpt + 3 * 8, kPdHigh | kTable);  // [3 GiB, 4 GiB)
  for (uint64_t i = 0; s && i < 512; ++i) s = put64(kPdLow + i * 8, (i << 21) | kLeaf2M);
  // The LAPIC page only, uncached: 0xfee00000 is PD index 0x1f7 of the 4th GiB.
  if (s) s = put64(kPdHigh + ((kLapic >> 21) & 0x1ff) * 8, kLapic | kLeaf2M | kPcdPwt);

  // GDT: null, kernel code/data (DPL 0), user code/data (DPL 3), 64-bit TSS (16 bytes).
  if (s) s = put64(kGdt + 0x00, 0);
  if (s) s = put64(kGdt + 0x08, detail::seg_desc(0x9b, 0xa));  // P, DPL0, code; G, L
  if (s) s = put64(kGdt + 0x10, detail::seg_desc(0x93, 0xc));  // P, DPL0, data; G, D/B
  if (s) s = put64(kGdt + 0x18, detail::seg_desc(0xfb, 0xa));  // P, DPL3, code; G, L
  if (s) s = put64(kGdt + 0x20, detail::seg_desc(0xf3, 0xc));  // P, DPL3, data; G, D/B
  constexpr uint16_t kIoBitmap = 0x68;
  constexpr uint64_t kTssLimit = kIoBitmap + 0x2000;  // includes the trailing 0xff byte
  if (s)
    s = put64(kGdt + 0x28, kTssLimit | ((kTss & 0xffffff) << 16) | (0x8bull << 40) |
                               (((kTss >> 24) & 0xff) << 56));  // P, busy 64-bit TSS
  if (s) s = put64(kGdt + 0x30, kTss >> 32);
  // TSS: RSP0 at offset 4 -- the stack a CPL-3 -> CPL-0 interrupt switches to.
  // I/O map base at 0x66 points right after the 0x68-byte TSS; the 8 KiB bitmap stays zero
  // (every port allowed at CPL 3) and is followed by the 0xff byte the SDM requires.
  if (s) s = put64(kTss + 4, kKernelStackTop);
  if (s) s = m.write_obj<uint16_t>(kTss + 0x66, kIoBitmap);
  if (s) s = m.write_obj<uint8_t>(kTss + kIoBitmap + 0x2000, 0xff);
  if (s) s = detail::write_exception_stubs(t, opt.handler_cs);
  if (!s) return std::unexpected(std::move(s.error()).context("tiny guest tables"));

  IOVIRT_TRY_CTX(sregs, t.vcpu.get_sregs(), "tiny guest");
  sregs.cs = detail::code_seg(kUserCs, 3);
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = detail::data_seg(kUserDs, 3);
  kvm_segment tr{};
  tr.base = kTss;
  tr.limit = kTssLimit;
  tr.selector = kTssSel;
  tr.type = 0xb;  // busy 64-bit TSS
  tr.present = 1;
  sregs.tr = tr;
  sregs.gdt.base = kGdt;
  sregs.gdt.limit = 0x37;
  sregs.idt.base = kIdt;
  sregs.idt.limit = 256 * 16 - 1;
  constexpr uint64_t kCr0Pe = 1, kCr0Et = 1u << 4, kCr0Ne = 1u << 5, kCr0Pg = 1ull << 31;
  constexpr uint64_t kCr4Pae = 1u << 5;
  constexpr uint64_t kEferLme = 1u << 8, kEferLma = 1u << 10;
  sregs.cr0 = kCr0Pe | kCr0Et | kCr0Ne | kCr0Pg;
  sregs.cr3 = kPml4;
  sregs.cr4 = kCr4Pae;
  sregs.efer = kEferLme | kEferLma;
  if (auto r = t.vcpu.set_sregs(sregs); !r) return std::unexpected(r.error());

  kvm_regs regs{};
  regs.rip = kCode;
  regs.rsp = kUserStackTop;
  regs.rflags = 0x2 | (opt.interrupts_enabled ? 0x200u : 0u);  // reserved bit 1 [, IF]
  if (auto r = t.vcpu.set_regs(regs); !r) return std::unexpected(r.error());
  return t;
}

// ---- the run loop --------------------------------------------------------------------------

// Kicks a vCPU thread out of KVM_RUN after `limit` unless cancelled first, so a hung guest
// fails its test instead of hanging ctest. A guard only: no test asserts on time.
class Watchdog {
 public:
  Watchdog(const VcpuFd& vcpu, pthread_t target, std::chrono::seconds limit)
      : thread_([this, &vcpu, target, limit] {
          std::unique_lock lock(mu_);
          if (cv_.wait_for(lock, limit, [this] { return cancelled_; })) return;
          fired_ = true;
          vcpu.set_immediate_exit(true);        // any later KVM_RUN returns at once...
          ::pthread_kill(target, kKickSignal);  // ...and this interrupts the current one
        }) {}
  ~Watchdog() {
    {
      std::lock_guard lock(mu_);
      cancelled_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  bool fired() const {
    std::lock_guard lock(mu_);
    return fired_;
  }

  // The kick signal needs a handler (the default action would kill the process); an empty
  // one installed without SA_RESTART makes KVM_RUN return EINTR.
  static void install_kick_handler() {
    struct sigaction sa {};
    sa.sa_handler = [](int) {};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    ::sigaction(kKickSignal, &sa, nullptr);
  }
  static constexpr int kKickSignal = SIGUSR2;

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool cancelled_ = false;
  bool fired_ = false;
  std::thread thread_;
};

struct RunResult {
  bool done = false;                        // the guest wrote kDonePort
  std::string failure;                      // why the run stopped otherwise
  std::map<uint64_t, unsigned> pio_exits;   // KVM_EXIT_IO count per port
  std::map<uint64_t, unsigned> mmio_exits;  // KVM_EXIT_MMIO count per GPA
};

inline std::string describe_stop(const TinyVm& t, const std::string& why) {
  std::ostringstream os;
  os << why;
  if (auto r = t.vcpu.get_regs(); r) {
    os << " (rip 0x" << std::hex << r->rip << " rsp 0x" << r->rsp << " rflags 0x" << r->rflags
       << " rax 0x" << r->rax << ")";
    if (auto sr = t.vcpu.get_sregs(); sr) os << " cr2 0x" << sr->cr2;
    // The exception stubs run with the CPU's frame on the stack: [error code,] RIP, CS, ...
    if (why.rfind("guest exception", 0) == 0) {
      os << " stack:";
      for (uint64_t i = 0; i < 6; ++i) os << " 0x" << t.peek<uint64_t>(r->rsp + i * 8);
    }
  }
  return os.str();
}

// Runs the vCPU on the calling thread until the guest writes kDonePort, dispatching port I/O to
// `pio` and MMIO to `mmio` (unclaimed reads see all-ones, unclaimed writes are dropped and only
// counted). Stops with a failure on any other exit, after `max_exits` exits, or when the
// watchdog fires.
inline RunResult run_guest(TinyVm& t, const Bus& pio, const Bus& mmio, unsigned max_exits = 1000,
                           std::chrono::seconds limit = std::chrono::seconds(20)) {
  Watchdog::install_kick_handler();
  RunResult res;
  Watchdog wd(t.vcpu, ::pthread_self(), limit);
  kvm_run* run = t.vcpu.run();
  for (unsigned n = 0; n < max_exits; ++n) {
    if (auto s = t.vcpu.run_once(); !s) {
      res.failure = s.error().message();
      return res;
    }
    switch (run->exit_reason) {
      case KVM_EXIT_IO: {
        const uint16_t port = run->io.port;
        ++res.pio_exits[port];
        uint8_t* data = reinterpret_cast<uint8_t*>(run) + run->io.data_offset;
        if (port == kDonePort) {
          res.done = true;
          return res;
        }
        if (port == kFaultPort) {
          res.failure = describe_stop(t, "guest exception " + std::to_string(data[0]));
          return res;
        }
        for (uint32_t i = 0; i < run->io.count; ++i) {
          std::span<uint8_t> d(data + size_t{i} * run->io.size, run->io.size);
          if (run->io.direction == KVM_EXIT_IO_OUT) {
            (void)pio.write(port, d);
          } else if (!pio.read(port, d)) {
            std::memset(d.data(), 0xff, d.size());
          }
        }
        break;
      }
      case KVM_EXIT_MMIO: {
        ++res.mmio_exits[run->mmio.phys_addr];
        std::span<uint8_t> d(run->mmio.data, run->mmio.len);
        if (run->mmio.is_write) {
          (void)mmio.write(run->mmio.phys_addr, d);
        } else if (!mmio.read(run->mmio.phys_addr, d)) {
          std::memset(d.data(), 0xff, d.size());
        }
        break;
      }
      case KVM_EXIT_INTR:
        if (wd.fired()) {
          res.failure = describe_stop(
              t, "watchdog: the guest did not finish in " + std::to_string(limit.count()) + " s");
          return res;
        }
        break;
      case KVM_EXIT_SHUTDOWN:
        res.failure = describe_stop(t, "KVM_EXIT_SHUTDOWN (triple fault)");
        return res;
      case KVM_EXIT_FAIL_ENTRY:
        res.failure = describe_stop(
            t, "KVM_EXIT_FAIL_ENTRY, hardware reason 0x" + [&] {
              std::ostringstream os;
              os << std::hex << run->fail_entry.hardware_entry_failure_reason;
              return os.str();
            }());
        return res;
      case KVM_EXIT_INTERNAL_ERROR:
        res.failure = describe_stop(
            t, "KVM_EXIT_INTERNAL_ERROR suberror " + std::to_string(run->internal.suberror));
        return res;
      default:
        res.failure =
            describe_stop(t, "unexpected exit reason " + std::to_string(run->exit_reason));
        return res;
    }
  }
  res.failure = describe_stop(t, "more than " + std::to_string(max_exits) + " exits");
  return res;
}

// ---- fixture -------------------------------------------------------------------------------

class TinyGuestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::access("/dev/kvm", F_OK) != 0) GTEST_SKIP() << "/dev/kvm is absent: no KVM on this host";
    auto k = Kvm::open();
    if (!k) GTEST_SKIP() << "/dev/kvm cannot be opened: " << k.error().message();
    kvm_.emplace(std::move(*k));
  }
  const Kvm& kvm() const { return *kvm_; }

 private:
  std::optional<Kvm> kvm_;
};

// ---- shared by the interrupt tests ----------------------------------------------------------

// LAPIC registers, reached through a register holding the address (a 32-bit displacement would be
// sign-extended in 64-bit code).
inline constexpr uint32_t kLapicSvr = 0xfee000f0;
inline constexpr uint32_t kLapicEoi = 0xfee000b0;
inline constexpr uint32_t kSvrApicEnable = 1u << 8;

// An interrupt handler that increments the u32 at `counter_gpa` and writes the LAPIC EOI.
inline Asm counting_handler(uint64_t counter_gpa) {
  Asm h;
  h.push_rax().push_rbx();
  h.mov_ebx(static_cast<uint32_t>(counter_gpa)).inc_mem_rbx();  // ++counter
  h.mov_ebx(kLapicEoi).xor_eax_eax().mov_mem_rbx_eax();         // EOI = 0
  h.pop_rbx().pop_rax();
  h.iretq();
  return h;
}

// Bounded wait for the guest to store at least `want` at `gpa`. The bound only keeps a broken
// guest from hanging the test; callers assert on the value, never on how long it took.
inline bool wait_for(const TinyVm& t, uint64_t gpa, uint32_t want) {
  for (int i = 0; i < 10000; ++i) {
    if (t.peek<uint32_t>(gpa) >= want) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return t.peek<uint32_t>(gpa) >= want;
}

// run_guest() on its own thread. However the test ends (a failed ASSERT returns early), the
// destructor writes 1 at `stop_gpa`, the word the guest's loop polls to leave, and joins, so no
// vCPU thread outlives the test (a hung guest is stopped by run_guest's watchdog).
class GuestThread {
 public:
  GuestThread(TinyVm& t, const Bus& pio, const Bus& mmio, uint64_t stop_gpa,
              unsigned max_exits = 1000)
      : t_(t), stop_gpa_(stop_gpa), thread_([this, &t, &pio, &mmio, max_exits] {
          result_ = run_guest(t, pio, mmio, max_exits);
        }) {}
  ~GuestThread() { join(); }
  GuestThread(const GuestThread&) = delete;
  GuestThread& operator=(const GuestThread&) = delete;

  // Tells the guest to stop, waits for the vCPU thread, returns how the run ended.
  const RunResult& join() {
    t_.poke<uint32_t>(stop_gpa_, 1);
    if (thread_.joinable()) thread_.join();
    return result_;
  }

 private:
  TinyVm& t_;
  uint64_t stop_gpa_;
  RunResult result_;
  std::thread thread_;  // last: started once the members it uses exist
};

}  // namespace iovirt::tiny
