#include "iovirt/vmm/x86_boot.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "iovirt/core/fd.hpp"
#include "iovirt/core/log.hpp"
#include "iovirt/vmm/elf_kernel.hpp"
#include "iovirt/vmm/layout.hpp"

namespace iovirt {

namespace {

constexpr uint64_t kMaxKernelFile = 512ull << 20;

Result<std::vector<uint8_t>> read_file(const std::string& path, uint64_t max) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail_errno("open " + path);
  Fd owned(fd);
  struct stat st{};
  if (::fstat(fd, &st) < 0) return fail_errno("stat " + path);
  if (!S_ISREG(st.st_mode)) return fail(path + " is not a regular file");
  if (static_cast<uint64_t>(st.st_size) > max) return fail(path + " is larger than " + std::to_string(max >> 20) + " MiB");
  std::vector<uint8_t> buf(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < buf.size()) {
    ssize_t n = ::read(fd, buf.data() + got, buf.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail_errno("read " + path);
    if (n == 0) return fail(path + ": file shrank while reading");
    got += static_cast<size_t>(n);
  }
  return buf;
}

// Reads a file straight into guest memory at gpa (checked against the region map).
Status read_into_guest(const std::string& path, int fd, const GuestMemory& mem, uint64_t gpa, uint64_t size) {
  auto dst = mem.span(gpa, size);
  if (!dst) return std::unexpected(std::move(dst.error()).context("place " + path));
  size_t got = 0;
  while (got < size) {
    ssize_t n = ::read(fd, dst->data() + got, size - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail_errno("read " + path);
    if (n == 0) return fail(path + ": file shrank while reading");
    got += static_cast<size_t>(n);
  }
  return {};
}

uint64_t gdt_entry(uint16_t flags, uint32_t base, uint32_t limit) {
  return ((static_cast<uint64_t>(base) & 0xff000000u) << 32) | ((static_cast<uint64_t>(flags) & 0xf0ffu) << 40) |
         ((static_cast<uint64_t>(limit) & 0x000f0000u) << 32) | ((static_cast<uint64_t>(base) & 0x00ffffffu) << 16) |
         (static_cast<uint64_t>(limit) & 0x0000ffffu);
}

kvm_segment segment_from_gdt(uint64_t e, uint16_t selector) {
  kvm_segment s{};
  s.base = static_cast<uint64_t>(((e >> 16) & 0xffffff) | (((e >> 56) & 0xff) << 24));
  uint32_t limit = static_cast<uint32_t>((e & 0xffff) | (((e >> 48) & 0xf) << 16));
  s.g = static_cast<uint8_t>((e >> 55) & 1);
  s.limit = s.g ? (limit << 12) | 0xfff : limit;
  s.selector = selector;
  s.type = static_cast<uint8_t>((e >> 40) & 0xf);
  s.s = static_cast<uint8_t>((e >> 44) & 1);
  s.dpl = static_cast<uint8_t>((e >> 45) & 3);
  s.present = static_cast<uint8_t>((e >> 47) & 1);
  s.avl = static_cast<uint8_t>((e >> 52) & 1);
  s.l = static_cast<uint8_t>((e >> 53) & 1);
  s.db = static_cast<uint8_t>((e >> 54) & 1);
  return s;
}

// GDT layout required by the boot protocol: __BOOT_CS = 0x10, __BOOT_DS = 0x18; TSS at 0x20.
const uint64_t kGdtTable[] = {
    0,
    0,
    gdt_entry(0xa09b, 0, 0xfffff),  // 64-bit code, present, DPL 0
    gdt_entry(0xc093, 0, 0xfffff),  // data, read/write
    gdt_entry(0x808b, 0, 0xfffff),  // 64-bit TSS (busy)
};

}  // namespace

std::vector<E820Entry> build_e820(uint64_t low_ram, uint64_t high_ram) {
  std::vector<E820Entry> e;
  auto add = [&](uint64_t a, uint64_t s, E820Type t) { e.push_back({a, s, static_cast<uint32_t>(t)}); };
  add(0, layout::kEbda, E820Type::Ram);
  add(layout::kEbda, 0xa0000 - layout::kEbda, E820Type::Reserved);
  add(layout::kAcpiStart, layout::kBiosEnd - layout::kAcpiStart, E820Type::Reserved);
  add(layout::kBiosEnd, low_ram - layout::kBiosEnd, E820Type::Ram);
  if (high_ram) add(layout::kHighRam, high_ram, E820Type::Ram);
  return e;
}

namespace {

// A setup header for kernels that come without one (ELF vmlinux): what the boot protocol's
// 64-bit entry reads from the zero page.
struct SyntheticSetup {
  std::vector<uint8_t> bytes = std::vector<uint8_t>(1024, 0);
  BzImage img;
  SyntheticSetup() {
    auto put16 = [&](size_t off, uint16_t v) { std::memcpy(bytes.data() + off, &v, 2); };
    auto put32 = [&](size_t off, uint32_t v) { std::memcpy(bytes.data() + off, &v, 4); };
    put16(0x1fe, 0xaa55);
    bytes[0x201] = 0x66;             // header runs to 0x268
    put32(0x202, 0x53726448);        // "HdrS"
    put16(0x206, 0x020f);
    bytes[0x211] = 0x01;             // LOADED_HIGH
    put32(0x22c, 0x7fffffff);        // initrd_addr_max
    put32(0x230, 0x1000000);         // kernel_alignment
    put32(0x238, 2048);              // COMMAND_LINE_SIZE on x86
    img.protocol = 0x020f;
    img.loadflags = 0x01;
    img.initrd_addr_max = 0x7fffffff;
    img.kernel_alignment = 0x1000000;
    img.cmdline_size = 2048;
    img.setup = bytes;
  }
};

Status pread_into_guest(const std::string& path, int fd, const GuestMemory& mem, uint64_t gpa, uint64_t off,
                        uint64_t size) {
  auto dst = mem.span(gpa, size);
  if (!dst) return std::unexpected(std::move(dst.error()).context("place " + path));
  size_t got = 0;
  while (got < size) {
    ssize_t n = ::pread(fd, dst->data() + got, size - got, static_cast<off_t>(off + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail_errno("read " + path);
    if (n == 0) return fail(path + ": file shrank while reading");
    got += static_cast<size_t>(n);
  }
  return {};
}

}  // namespace

Result<LinuxBootInfo> load_linux(const GuestMemory& mem, const LinuxBootSpec& spec) {
  LinuxBootInfo info;
  uint64_t kernel_end = 0;
  std::vector<uint8_t> file;
  BzImage img;
  SyntheticSetup synthetic;

  int kfd = ::open(spec.kernel_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (kfd < 0) return fail_errno("kernel: open " + spec.kernel_path);
  Fd kernel_fd(kfd);
  struct stat kst{};
  if (::fstat(kfd, &kst) < 0) return fail_errno("kernel: stat " + spec.kernel_path);
  if (!S_ISREG(kst.st_mode)) return fail("kernel: " + spec.kernel_path + " is not a regular file");
  std::vector<uint8_t> head(std::min<uint64_t>(static_cast<uint64_t>(kst.st_size), 64 * 1024));
  if (::pread(kfd, head.data(), head.size(), 0) != static_cast<ssize_t>(head.size()))
    return fail_errno("kernel: read " + spec.kernel_path);

  if (is_elf(head)) {
    // vmlinux: copy each PT_LOAD segment straight from the file into guest memory.
    IOVIRT_TRY_CTX(elf, parse_elf_kernel(head, static_cast<uint64_t>(kst.st_size)), spec.kernel_path);
    if (elf.lowest < layout::kBiosEnd) return fail(spec.kernel_path + ": ELF kernel loads below 1 MiB");
    if (elf.highest > spec.low_ram)
      return fail("kernel needs " + std::to_string((elf.highest + (1 << 20) - 1) >> 20) +
                  " MiB of low memory; give the VM more --memory");
    for (const auto& seg : elf.segments) {
      if (auto s = pread_into_guest(spec.kernel_path, kfd, mem, seg.paddr, seg.file_offset, seg.filesz); !s)
        return std::unexpected(std::move(s.error()).context("kernel"));
      if (seg.memsz > seg.filesz) {
        auto bss = mem.span(seg.paddr + seg.filesz, seg.memsz - seg.filesz);
        if (!bss) return std::unexpected(std::move(bss.error()).context("kernel bss"));
        std::memset(bss->data(), 0, bss->size());
      }
    }
    img = synthetic.img;
    info.entry = elf.entry;
    kernel_end = elf.highest;
  } else {
    IOVIRT_TRY_CTX(whole, read_file(spec.kernel_path, kMaxKernelFile), "kernel");
    file = std::move(whole);
    IOVIRT_TRY_CTX(parsed, parse_bzimage(file), spec.kernel_path);
    img = parsed;
    kernel_end = layout::kKernelLoad + std::max<uint64_t>(img.init_size, img.kernel.size());
    if (kernel_end > spec.low_ram)
      return fail("kernel needs " + std::to_string((kernel_end + (1 << 20) - 1) >> 20) +
                  " MiB of low memory; give the VM more --memory");
    if (auto s = mem.write(layout::kKernelLoad, img.kernel); !s)
      return std::unexpected(std::move(s.error()).context("load kernel"));
    info.entry = layout::kKernelLoad + 0x200;
  }
  info.protocol = img.protocol;

  ZeroPageParams zp;
  zp.cmdline_gpa = layout::kCmdline;
  zp.cmdline_len = static_cast<uint32_t>(spec.cmdline.size());
  if (spec.cmdline.size() + 1 > layout::kCmdlineMax) return fail("kernel command line is longer than 64 KiB");
  std::vector<uint8_t> cl(spec.cmdline.begin(), spec.cmdline.end());
  cl.push_back(0);
  if (auto s = mem.write(layout::kCmdline, cl); !s) return std::unexpected(std::move(s.error()).context("command line"));

  if (!spec.initrd_path.empty()) {
    int fd = ::open(spec.initrd_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail_errno("initrd: open " + spec.initrd_path);
    Fd owned(fd);
    struct stat st{};
    if (::fstat(fd, &st) < 0) return fail_errno("initrd: stat " + spec.initrd_path);
    if (!S_ISREG(st.st_mode)) return fail("initrd: " + spec.initrd_path + " is not a regular file");
    uint64_t size = static_cast<uint64_t>(st.st_size);
    uint64_t top = std::min<uint64_t>(spec.low_ram, uint64_t{img.initrd_addr_max} + 1);
    if (size == 0) return fail("initrd: " + spec.initrd_path + " is empty");
    if (size > top || ((top - size) & ~uint64_t{0xfff}) < kernel_end)
      return fail("initrd: " + spec.initrd_path + " (" + std::to_string(size >> 20) +
                  " MiB) does not fit in low memory beside the kernel; give the VM more --memory");
    uint64_t at = (top - size) & ~uint64_t{0xfff};
    if (auto s = read_into_guest(spec.initrd_path, fd, mem, at, size); !s)
      return std::unexpected(std::move(s.error()).context("initrd"));
    info.initrd_gpa = at;
    info.initrd_size = size;
    zp.initrd_gpa = at;
    zp.initrd_size = size;
  }

  zp.rsdp_gpa = spec.rsdp_gpa;
  zp.e820 = build_e820(spec.low_ram, spec.high_ram);
  IOVIRT_TRY_CTX(page, build_zero_page(img, zp), "zero page");
  if (auto s = mem.write(layout::kZeroPage, page); !s) return std::unexpected(std::move(s.error()).context("zero page"));
  info.zero_page = layout::kZeroPage;

  // GDT, empty IDT.
  if (auto s = mem.write(layout::kGdt, std::span(reinterpret_cast<const uint8_t*>(kGdtTable), sizeof kGdtTable)); !s)
    return std::unexpected(std::move(s.error()).context("GDT"));
  // Identity map of the low 4 GiB with 2 MiB pages (1 GiB pages are not usable on every KVM).
  if (auto s = mem.write_obj<uint64_t>(layout::kPml4, layout::kPdpt | 0x3); !s) return std::unexpected(s.error());
  for (uint64_t i = 0; i < 4; ++i) {
    uint64_t pd = layout::kPd + i * 0x1000;
    if (auto s = mem.write_obj<uint64_t>(layout::kPdpt + i * 8, pd | 0x3); !s) return std::unexpected(s.error());
    for (uint64_t j = 0; j < 512; ++j) {
      uint64_t addr = (i << 30) | (j << 21);
      if (auto s = mem.write_obj<uint64_t>(pd + j * 8, addr | 0x83); !s) return std::unexpected(s.error());
    }
  }
  return info;
}

Status install_reset_stub(const GuestMemory& mem) {
  const uint8_t stub[] = {
      0xb0, 0xfe,  // mov al, 0xfe      ; i8042 command: pulse the CPU reset line
      0xe6, 0x64,  // out 0x64, al
      0xf4,        // hlt
      0xeb, 0xfd,  // jmp short -3      ; back to hlt
  };
  return mem.write(layout::kResetVector, stub);
}

Status setup_boot_vcpu(const VcpuFd& vcpu, const LinuxBootInfo& info) {
  IOVIRT_TRY_CTX(sregs, vcpu.get_sregs(), "boot vCPU");
  sregs.gdt.base = layout::kGdt;
  sregs.gdt.limit = sizeof kGdtTable - 1;
  sregs.idt.base = layout::kIdt;
  sregs.idt.limit = 0;
  sregs.cs = segment_from_gdt(kGdtTable[2], 0x10);
  kvm_segment data = segment_from_gdt(kGdtTable[3], 0x18);
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
  sregs.tr = segment_from_gdt(kGdtTable[4], 0x20);
  constexpr uint64_t kCr0Pe = 1, kCr0Et = 1u << 4, kCr0Ne = 1u << 5, kCr0Pg = 1ull << 31;
  constexpr uint64_t kCr4Pae = 1u << 5;
  constexpr uint64_t kEferLme = 1u << 8, kEferLma = 1u << 10;
  sregs.cr0 = kCr0Pe | kCr0Et | kCr0Ne | kCr0Pg;
  sregs.cr3 = layout::kPml4;
  sregs.cr4 = kCr4Pae;
  sregs.efer = kEferLme | kEferLma;
  if (auto s = vcpu.set_sregs(sregs); !s) return s;

  kvm_regs regs{};
  regs.rflags = 0x2;
  regs.rip = info.entry;
  regs.rsi = info.zero_page;
  regs.rsp = regs.rbp = layout::kBootStack;
  return vcpu.set_regs(regs);
}

std::vector<kvm_cpuid_entry2> vcpu_cpuid(std::vector<kvm_cpuid_entry2> cpuid, uint32_t index, uint32_t count,
                                         bool tsc_deadline) {
  for (auto& e : cpuid) {
    switch (e.function) {
      case 0x1:
        // EBX: initial APIC id, logical processor count, CLFLUSH line size (8 x 8 bytes).
        e.ebx = (index << 24) | (std::min<uint32_t>(count, 255) << 16) | (8u << 8);
        e.ecx |= 1u << 31;  // hypervisor present
        if (tsc_deadline) e.ecx |= 1u << 24;
        if (count > 1) e.edx |= 1u << 28;  // HTT: the count in EBX is valid
        break;
      case 0xb:
      case 0x1f:
        e.edx = index;  // x2APIC id
        break;
      case 0xd:
        // EBX is the XSAVE area size for the features enabled in XCR0. KVM reports it for the
        // reset XCR0 and updates it when the guest executes XSETBV, but only if XSETBV exits;
        // report the size for every supported feature instead (as QEMU does), which is what
        // Linux enables, so its XSAVE size check holds either way.
        if (e.index == 0) e.ebx = e.ecx;
        break;
      case 0x8000001e:
        e.eax = index;  // extended APIC id
        break;
      default:
        break;
    }
  }
  return cpuid;
}

Status setup_vcpu_common(const VcpuFd& vcpu) {
  // Firmware-like MSR state: syscall MSRs clear, fast strings on, MTRRs enabled with
  // write-back as the default type (without it Linux maps all RAM uncached). The TSC is left
  // alone: KVM starts every vCPU's TSC in sync, and writing it per vCPU can only skew them.
  const kvm_msr_entry msrs[] = {
      {0x174, 0, 0}, {0x175, 0, 0}, {0x176, 0, 0},                     // SYSENTER_CS/ESP/EIP
      {0xc0000081, 0, 0}, {0xc0000082, 0, 0}, {0xc0000083, 0, 0},      // STAR, LSTAR, CSTAR
      {0xc0000084, 0, 0}, {0xc0000102, 0, 0},                          // SFMASK, KERNEL_GS_BASE
      {0x1a0, 0, 1},                                                   // MISC_ENABLE.FAST_STRING
      {0x2ff, 0, (1u << 11) | 6},                                      // MTRRdefType: E, WB
  };
  for (const auto& m : msrs) {
    if (auto s = vcpu.set_msrs(std::span(&m, 1)); !s) log_debug(s.error().message());
  }

  kvm_fpu fpu{};
  fpu.fcw = 0x37f;
  fpu.mxcsr = 0x1f80;
  if (auto s = vcpu.set_fpu(fpu); !s) return s;

  // LAPIC: LINT0 as ExtINT (the 8259 path), LINT1 as NMI, as PC firmware programs them.
  IOVIRT_TRY_CTX(lapic, vcpu.get_lapic(), "LAPIC");
  auto reg = [&](size_t off) -> uint32_t* { return reinterpret_cast<uint32_t*>(lapic.regs + off); };
  constexpr size_t kLvtLint0 = 0x350, kLvtLint1 = 0x360;
  *reg(kLvtLint0) = (*reg(kLvtLint0) & ~0x700u) | (7u << 8);
  *reg(kLvtLint1) = (*reg(kLvtLint1) & ~0x700u) | (4u << 8);
  return vcpu.set_lapic(lapic);
}

}  // namespace iovirt
