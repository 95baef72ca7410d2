// Thin typed RAII wrappers over the KVM uAPI: one class per fd kind (system, VM, vCPU), every
// ioctl checked, every error naming the ioctl and the object it was issued on.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/fd.hpp"

namespace iovirt {

class VmFd;
class VcpuFd;

class Kvm final {
 public:
  // Opens /dev/kvm and checks the API version is 12.
  static Result<Kvm> open(const std::string& path = "/dev/kvm");

  [[nodiscard]] int check_extension(long cap) const;  // 0 when absent
  // Recommended maximum number of vCPUs (KVM_CAP_NR_VCPUS), hard limit (KVM_CAP_MAX_VCPUS).
  [[nodiscard]] int max_vcpus() const;
  Result<size_t> vcpu_mmap_size() const;
  Result<std::vector<kvm_cpuid_entry2>> supported_cpuid() const;
  Result<std::vector<uint32_t>> msr_index_list() const;
  Result<VmFd> create_vm() const;
  int fd() const { return fd_.get(); }

 private:
  explicit Kvm(Fd fd) : fd_(std::move(fd)) {}
  Fd fd_;
};

struct IoEventFdSpec {
  uint64_t addr = 0;
  uint32_t len = 0;          // 0 = any width (MMIO only), else 1/2/4/8
  bool pio = false;
  bool datamatch = false;
  uint64_t data = 0;
};

class VmFd final {
 public:
  [[nodiscard]] int check_extension(long cap) const;
  Status set_tss_addr(uint64_t addr) const;
  Status set_identity_map_addr(uint64_t addr) const;
  Status create_irqchip() const;
  Status create_pit2() const;
  Status set_user_memory_region(uint32_t slot, uint64_t gpa, uint64_t size, void* host,
                                uint32_t flags = 0) const;
  Status irq_line(uint32_t irq, bool level) const;
  Status set_gsi_routing(std::span<const kvm_irq_routing_entry> entries) const;
  Status signal_msi(uint64_t addr, uint32_t data) const;
  Status register_irqfd(int eventfd, uint32_t gsi, int resamplefd = -1) const;
  Status unregister_irqfd(int eventfd, uint32_t gsi) const;
  Status register_ioeventfd(int eventfd, const IoEventFdSpec& spec) const;
  Status unregister_ioeventfd(int eventfd, const IoEventFdSpec& spec) const;
  Status enable_cap(uint32_t cap, uint64_t arg0 = 0) const;
  Result<Fd> create_device(uint32_t type) const;
  Result<VcpuFd> create_vcpu(uint32_t id, size_t mmap_size) const;
  int fd() const { return fd_.get(); }

 private:
  friend class Kvm;
  explicit VmFd(Fd fd) : fd_(std::move(fd)) {}
  Fd fd_;
};

// A vCPU fd plus its shared kvm_run page. Used by exactly one thread at a time (its own),
// except set_immediate_exit which another thread may call to kick it out of KVM_RUN.
class VcpuFd final {
 public:
  VcpuFd(VcpuFd&& o) noexcept;
  VcpuFd& operator=(VcpuFd&&) = delete;
  VcpuFd(const VcpuFd&) = delete;
  ~VcpuFd();

  // KVM_RUN. EINTR/EAGAIN are not errors: they return with run()->exit_reason == KVM_EXIT_INTR.
  Status run_once();
  kvm_run* run() const { return run_; }
  uint32_t id() const { return id_; }
  int fd() const { return fd_.get(); }

  Result<kvm_regs> get_regs() const;
  Status set_regs(const kvm_regs& r) const;
  Result<kvm_sregs> get_sregs() const;
  Status set_sregs(const kvm_sregs& s) const;
  Status set_fpu(const kvm_fpu& f) const;
  Status set_cpuid(std::span<const kvm_cpuid_entry2> entries) const;
  // Sets every MSR; fails (naming the first one refused) unless KVM accepts all of them.
  Status set_msrs(std::span<const kvm_msr_entry> msrs) const;
  Result<kvm_lapic_state> get_lapic() const;
  Status set_lapic(const kvm_lapic_state& l) const;
  Result<kvm_mp_state> get_mp_state() const;
  void set_immediate_exit(bool on) const;

 private:
  friend class VmFd;
  VcpuFd(Fd fd, kvm_run* run, size_t size, uint32_t id)
      : fd_(std::move(fd)), run_(run), run_size_(size), id_(id) {}
  Fd fd_;
  kvm_run* run_;
  size_t run_size_;
  uint32_t id_;
};

}  // namespace iovirt
