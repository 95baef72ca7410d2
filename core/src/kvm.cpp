#include "iovirt/core/kvm.hpp"

#include "iovirt/core/hex.hpp"
#include "iovirt/core/kvm_uapi.hpp"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <memory>

namespace iovirt {

namespace {

// A flexible-array ioctl argument: a C-layout header (kvm_uapi.hpp) followed directly by n
// entries, in u64 storage so both stay aligned.
template <class Header, class Entry>
class Flex {
 public:
  explicit Flex(size_t n) : words_(new uint64_t[(sizeof(Header) + n * sizeof(Entry) + 7) / 8]()) {}
  Header* get() { return reinterpret_cast<Header*>(words_.get()); }
  Entry* entries() { return reinterpret_cast<Entry*>(reinterpret_cast<uint8_t*>(words_.get()) + sizeof(Header)); }

 private:
  std::unique_ptr<uint64_t[]> words_;  // never null: unlike vector::data() the compiler can see it
};

}  // namespace

// ---- Kvm -------------------------------------------------------------------------------------

Result<Kvm> Kvm::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return fail_errno("open " + path);
  Kvm kvm{Fd(fd)};
  int v = ::ioctl(fd, KVM_GET_API_VERSION, 0);
  if (v < 0) return fail_errno("KVM_GET_API_VERSION on " + path);
  if (v != KVM_API_VERSION)
    return fail(path + ": KVM API version " + std::to_string(v) + ", need " +
                std::to_string(KVM_API_VERSION));
  return kvm;
}

int Kvm::check_extension(long cap) const {
  int r = ::ioctl(fd_.get(), KVM_CHECK_EXTENSION, cap);
  return r < 0 ? 0 : r;
}

int Kvm::max_vcpus() const {
  int n = check_extension(KVM_CAP_MAX_VCPUS);
  if (n <= 0) n = check_extension(KVM_CAP_NR_VCPUS);
  return n > 0 ? n : 4;  // the API documents 4 when neither cap is present
}

Result<size_t> Kvm::vcpu_mmap_size() const {
  int r = ::ioctl(fd_.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
  if (r <= 0) return fail_errno("KVM_GET_VCPU_MMAP_SIZE");
  return static_cast<size_t>(r);
}

Result<std::vector<kvm_cpuid_entry2>> Kvm::supported_cpuid() const {
  for (size_t n = 128; n <= 4096; n *= 2) {
    Flex<kvm_uapi::CpuidHeader, kvm_cpuid_entry2> buf(n);
    buf.get()->nent = static_cast<uint32_t>(n);
    if (::ioctl(fd_.get(), kvm_uapi::kGetSupportedCpuid, buf.get()) == 0)
      return std::vector<kvm_cpuid_entry2>(buf.entries(), buf.entries() + buf.get()->nent);
    if (errno != E2BIG) return fail_errno("KVM_GET_SUPPORTED_CPUID");
  }
  return fail("KVM_GET_SUPPORTED_CPUID: more than 4096 entries", E2BIG);
}

Result<std::vector<uint32_t>> Kvm::msr_index_list() const {
  kvm_uapi::MsrListHeader probe{};
  if (::ioctl(fd_.get(), kvm_uapi::kGetMsrIndexList, &probe) < 0 && errno != E2BIG)
    return fail_errno("KVM_GET_MSR_INDEX_LIST");
  Flex<kvm_uapi::MsrListHeader, uint32_t> buf(probe.nmsrs);
  buf.get()->nmsrs = probe.nmsrs;
  if (::ioctl(fd_.get(), kvm_uapi::kGetMsrIndexList, buf.get()) < 0)
    return fail_errno("KVM_GET_MSR_INDEX_LIST");
  return std::vector<uint32_t>(buf.entries(), buf.entries() + buf.get()->nmsrs);
}

Result<VmFd> Kvm::create_vm() const {
  int fd;
  do {
    fd = ::ioctl(fd_.get(), KVM_CREATE_VM, 0);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return fail_errno("KVM_CREATE_VM");
  return VmFd(Fd(fd));
}

// ---- VmFd ------------------------------------------------------------------------------------

int VmFd::check_extension(long cap) const {
  int r = ::ioctl(fd_.get(), KVM_CHECK_EXTENSION, cap);
  return r < 0 ? 0 : r;
}

Status VmFd::set_tss_addr(uint64_t addr) const {
  if (::ioctl(fd_.get(), KVM_SET_TSS_ADDR, static_cast<unsigned long>(addr)) < 0)
    return fail_errno("KVM_SET_TSS_ADDR " + hex(addr));
  return {};
}

Status VmFd::set_identity_map_addr(uint64_t addr) const {
  if (::ioctl(fd_.get(), KVM_SET_IDENTITY_MAP_ADDR, &addr) < 0)
    return fail_errno("KVM_SET_IDENTITY_MAP_ADDR " + hex(addr));
  return {};
}

Status VmFd::create_irqchip() const {
  if (::ioctl(fd_.get(), KVM_CREATE_IRQCHIP, 0) < 0) return fail_errno("KVM_CREATE_IRQCHIP");
  return {};
}

Status VmFd::create_pit2() const {
  kvm_pit_config cfg{};
  cfg.flags = KVM_PIT_SPEAKER_DUMMY;
  if (::ioctl(fd_.get(), KVM_CREATE_PIT2, &cfg) < 0) return fail_errno("KVM_CREATE_PIT2");
  return {};
}

Status VmFd::set_user_memory_region(uint32_t slot, uint64_t gpa, uint64_t size, void* host,
                                    uint32_t flags) const {
  kvm_userspace_memory_region r{};
  r.slot = slot;
  r.flags = flags;
  r.guest_phys_addr = gpa;
  r.memory_size = size;
  r.userspace_addr = reinterpret_cast<uint64_t>(host);
  if (::ioctl(fd_.get(), KVM_SET_USER_MEMORY_REGION, &r) < 0)
    return fail_errno("KVM_SET_USER_MEMORY_REGION slot " + std::to_string(slot) + " gpa " +
                      hex(gpa) + " size " + hex(size));
  return {};
}

Status VmFd::irq_line(uint32_t irq, bool level) const {
  kvm_irq_level l{};
  l.irq = irq;
  l.level = level ? 1 : 0;
  if (::ioctl(fd_.get(), KVM_IRQ_LINE, &l) < 0)
    return fail_errno("KVM_IRQ_LINE irq " + std::to_string(irq));
  return {};
}

Status VmFd::set_gsi_routing(std::span<const kvm_irq_routing_entry> entries) const {
  Flex<kvm_uapi::IrqRoutingHeader, kvm_irq_routing_entry> buf(entries.size());
  buf.get()->nr = static_cast<uint32_t>(entries.size());
  buf.get()->flags = 0;
  if (!entries.empty()) std::memcpy(buf.entries(), entries.data(), entries.size_bytes());
  if (::ioctl(fd_.get(), kvm_uapi::kSetGsiRouting, buf.get()) < 0)
    return fail_errno("KVM_SET_GSI_ROUTING (" + std::to_string(entries.size()) + " entries)");
  return {};
}

Status VmFd::signal_msi(uint64_t addr, uint32_t data) const {
  kvm_msi m{};
  m.address_lo = static_cast<uint32_t>(addr);
  m.address_hi = static_cast<uint32_t>(addr >> 32);
  m.data = data;
  if (::ioctl(fd_.get(), KVM_SIGNAL_MSI, &m) < 0)
    return fail_errno("KVM_SIGNAL_MSI addr " + hex(addr) + " data " + hex(data));
  return {};
}

Status VmFd::register_irqfd(int eventfd, uint32_t gsi, int resamplefd) const {
  kvm_irqfd f{};
  f.fd = static_cast<uint32_t>(eventfd);
  f.gsi = gsi;
  if (resamplefd >= 0) {
    f.flags = KVM_IRQFD_FLAG_RESAMPLE;
    f.resamplefd = static_cast<uint32_t>(resamplefd);
  }
  if (::ioctl(fd_.get(), KVM_IRQFD, &f) < 0)
    return fail_errno("KVM_IRQFD gsi " + std::to_string(gsi));
  return {};
}

Status VmFd::unregister_irqfd(int eventfd, uint32_t gsi) const {
  kvm_irqfd f{};
  f.fd = static_cast<uint32_t>(eventfd);
  f.gsi = gsi;
  f.flags = KVM_IRQFD_FLAG_DEASSIGN;
  if (::ioctl(fd_.get(), KVM_IRQFD, &f) < 0)
    return fail_errno("KVM_IRQFD deassign gsi " + std::to_string(gsi));
  return {};
}

namespace {
kvm_ioeventfd make_ioeventfd(int eventfd, const IoEventFdSpec& s) {
  kvm_ioeventfd e{};
  e.addr = s.addr;
  e.len = s.len;
  e.fd = eventfd;
  e.datamatch = s.data;
  if (s.pio) e.flags |= KVM_IOEVENTFD_FLAG_PIO;
  if (s.datamatch) e.flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
  return e;
}
}  // namespace

Status VmFd::register_ioeventfd(int eventfd, const IoEventFdSpec& spec) const {
  kvm_ioeventfd e = make_ioeventfd(eventfd, spec);
  if (::ioctl(fd_.get(), KVM_IOEVENTFD, &e) < 0)
    return fail_errno(std::string("KVM_IOEVENTFD ") + (spec.pio ? "pio " : "mmio ") +
                      hex(spec.addr) + " len " + std::to_string(spec.len));
  return {};
}

Status VmFd::unregister_ioeventfd(int eventfd, const IoEventFdSpec& spec) const {
  kvm_ioeventfd e = make_ioeventfd(eventfd, spec);
  e.flags |= KVM_IOEVENTFD_FLAG_DEASSIGN;
  if (::ioctl(fd_.get(), KVM_IOEVENTFD, &e) < 0)
    return fail_errno("KVM_IOEVENTFD deassign " + hex(spec.addr));
  return {};
}

Status VmFd::enable_cap(uint32_t cap, uint64_t arg0) const {
  kvm_enable_cap c{};
  c.cap = cap;
  c.args[0] = arg0;
  if (::ioctl(fd_.get(), KVM_ENABLE_CAP, &c) < 0)
    return fail_errno("KVM_ENABLE_CAP " + std::to_string(cap));
  return {};
}

Result<Fd> VmFd::create_device(uint32_t type) const {
  kvm_create_device d{};
  d.type = type;
  if (::ioctl(fd_.get(), KVM_CREATE_DEVICE, &d) < 0)
    return fail_errno("KVM_CREATE_DEVICE type " + std::to_string(type));
  return Fd(static_cast<int>(d.fd));
}

Result<VcpuFd> VmFd::create_vcpu(uint32_t id, size_t mmap_size) const {
  int fd = ::ioctl(fd_.get(), KVM_CREATE_VCPU, static_cast<unsigned long>(id));
  if (fd < 0) return fail_errno("KVM_CREATE_VCPU " + std::to_string(id));
  Fd owned(fd);
  void* p = ::mmap(nullptr, mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return fail_errno("mmap kvm_run of vCPU " + std::to_string(id));
  return VcpuFd(std::move(owned), static_cast<kvm_run*>(p), mmap_size, id);
}

// ---- VcpuFd ----------------------------------------------------------------------------------

VcpuFd::VcpuFd(VcpuFd&& o) noexcept
    : fd_(std::move(o.fd_)),
      run_(std::exchange(o.run_, nullptr)),
      run_size_(o.run_size_),
      id_(o.id_) {}

VcpuFd::~VcpuFd() {
  if (run_) ::munmap(run_, run_size_);
}

Status VcpuFd::run_once() {
  if (::ioctl(fd_.get(), KVM_RUN, 0) < 0) {
    if (errno == EINTR || errno == EAGAIN) {
      run_->exit_reason = KVM_EXIT_INTR;
      return {};
    }
    return fail_errno("KVM_RUN on vCPU " + std::to_string(id_));
  }
  return {};
}

#define IOVIRT_VCPU_GET(type, req, name)                                            \
  Result<type> VcpuFd::name() const {                                                \
    type v{};                                                                        \
    if (::ioctl(fd_.get(), req, &v) < 0)                                             \
      return fail_errno(#req " on vCPU " + std::to_string(id_));                     \
    return v;                                                                        \
  }
#define IOVIRT_VCPU_SET(type, req, name)                                            \
  Status VcpuFd::name(const type& v) const {                                         \
    if (::ioctl(fd_.get(), req, &v) < 0)                                             \
      return fail_errno(#req " on vCPU " + std::to_string(id_));                     \
    return {};                                                                       \
  }

IOVIRT_VCPU_GET(kvm_regs, KVM_GET_REGS, get_regs)
IOVIRT_VCPU_SET(kvm_regs, KVM_SET_REGS, set_regs)
IOVIRT_VCPU_GET(kvm_sregs, KVM_GET_SREGS, get_sregs)
IOVIRT_VCPU_SET(kvm_sregs, KVM_SET_SREGS, set_sregs)
IOVIRT_VCPU_SET(kvm_fpu, KVM_SET_FPU, set_fpu)
IOVIRT_VCPU_GET(kvm_lapic_state, KVM_GET_LAPIC, get_lapic)
IOVIRT_VCPU_SET(kvm_lapic_state, KVM_SET_LAPIC, set_lapic)
IOVIRT_VCPU_GET(kvm_mp_state, KVM_GET_MP_STATE, get_mp_state)

Status VcpuFd::set_cpuid(std::span<const kvm_cpuid_entry2> entries) const {
  Flex<kvm_uapi::CpuidHeader, kvm_cpuid_entry2> buf(entries.size());
  buf.get()->nent = static_cast<uint32_t>(entries.size());
  if (!entries.empty()) std::memcpy(buf.entries(), entries.data(), entries.size_bytes());
  if (::ioctl(fd_.get(), kvm_uapi::kSetCpuid2, buf.get()) < 0)
    return fail_errno("KVM_SET_CPUID2 on vCPU " + std::to_string(id_));
  return {};
}

Status VcpuFd::set_msrs(std::span<const kvm_msr_entry> msrs) const {
  Flex<kvm_uapi::MsrsHeader, kvm_msr_entry> buf(msrs.size());
  buf.get()->nmsrs = static_cast<uint32_t>(msrs.size());
  if (!msrs.empty()) std::memcpy(buf.entries(), msrs.data(), msrs.size_bytes());
  int n = ::ioctl(fd_.get(), kvm_uapi::kSetMsrs, buf.get());
  if (n < 0) return fail_errno("KVM_SET_MSRS on vCPU " + std::to_string(id_));
  if (static_cast<size_t>(n) != msrs.size())
    return fail("KVM_SET_MSRS on vCPU " + std::to_string(id_) + ": MSR " +
                hex(msrs[static_cast<size_t>(n)].index) + " refused");
  return {};
}

void VcpuFd::set_immediate_exit(bool on) const {
  __atomic_store_n(&run_->immediate_exit, on ? 1 : 0, __ATOMIC_SEQ_CST);
}

}  // namespace iovirt
