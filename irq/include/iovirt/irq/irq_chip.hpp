// The narrow slice of the VM fd that interrupt and doorbell plumbing needs. The irq layer is the
// only code that talks to KVM about interrupts and ioeventfds; devices get an MsixInterrupts (or
// an eventfd) instead.
// KvmIrqChip forwards to a real VmFd; RecordingIrqChip (recording_irq_chip.hpp) is the unit-test
// seam.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <span>

#include "iovirt/core/error.hpp"
#include "iovirt/core/kvm.hpp"

namespace iovirt {

class IrqChip {
 public:
  virtual ~IrqChip() = default;
  // KVM_SET_GSI_ROUTING: replaces the whole table.
  virtual Status set_gsi_routing(std::span<const kvm_irq_routing_entry> entries) = 0;
  // KVM_IRQFD assign (resamplefd -1: edge) / deassign.
  virtual Status register_irqfd(int eventfd, uint32_t gsi, int resamplefd = -1) = 0;
  virtual Status unregister_irqfd(int eventfd, uint32_t gsi) = 0;
  // KVM_SIGNAL_MSI: one message, no route needed.
  virtual Status signal_msi(uint64_t addr, uint32_t data) = 0;
  // KVM_IOEVENTFD assign / deassign: a guest write matching `spec` signals `eventfd` in the
  // kernel, with no exit to userspace (the doorbell path).
  virtual Status register_ioeventfd(int eventfd, const IoEventFdSpec& spec) = 0;
  virtual Status unregister_ioeventfd(int eventfd, const IoEventFdSpec& spec) = 0;
};

class KvmIrqChip final : public IrqChip {
 public:
  // `vm` must outlive this object.
  explicit KvmIrqChip(const VmFd& vm) : vm_(vm) {}
  Status set_gsi_routing(std::span<const kvm_irq_routing_entry> entries) override;
  Status register_irqfd(int eventfd, uint32_t gsi, int resamplefd = -1) override;
  Status unregister_irqfd(int eventfd, uint32_t gsi) override;
  Status signal_msi(uint64_t addr, uint32_t data) override;
  Status register_ioeventfd(int eventfd, const IoEventFdSpec& spec) override;
  Status unregister_ioeventfd(int eventfd, const IoEventFdSpec& spec) override;

 private:
  const VmFd& vm_;
};

}  // namespace iovirt
