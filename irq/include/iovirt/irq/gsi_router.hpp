// The VM's GSI routing table (KVM_SET_GSI_ROUTING) and the allocator of MSI GSIs.
//
// KVM replaces the whole table on every KVM_SET_GSI_ROUTING, so this class owns all of it: the
// in-kernel irqchip's default routes for GSIs 0-23 (PIC master 0-7, slave 8-15 without the
// cascade pin 2, IOAPIC pins 0-23, the same set KVM installs at KVM_CREATE_IRQCHIP) stay in every
// commit, and MSI routes are allocated from `first_msi_gsi` up. Each change is one ioctl; when it
// fails the table is left as it was before the call.
// Thread-safe (one mutex): routing changes are control path (guest MSI-X table writes, setup).
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/irq/irq_chip.hpp"

namespace iovirt {

class GsiRouter final {
 public:
  struct Options {
    // Keep the in-kernel irqchip's default routes (false: a VM without KVM_CREATE_IRQCHIP).
    bool irqchip_routes = true;
    uint32_t first_msi_gsi = 24;  // past the 24 IOAPIC pins
    uint32_t max_gsi = 1023;      // inclusive; KVM's limit on x86 is KVM_MAX_IRQ_ROUTES - 1
  };

  // `chip` must outlive the router. Nothing is sent to KVM until the first change or commit().
  explicit GsiRouter(IrqChip& chip) : GsiRouter(chip, Options{}) {}
  GsiRouter(IrqChip& chip, Options opt);
  GsiRouter(const GsiRouter&) = delete;
  GsiRouter& operator=(const GsiRouter&) = delete;

  // KVM's defaults for an in-kernel PIC + IOAPIC (see above).
  static std::vector<kvm_irq_routing_entry> default_irqchip_routes();

  // Allocates the lowest free MSI GSI and routes it to the message; fails with ENOSPC when
  // [first_msi_gsi, max_gsi] is used up.
  Result<uint32_t> add_msi_route(uint64_t addr, uint32_t data);
  // Re-points an allocated MSI GSI (an irqfd on it follows: KVM updates irqfds on a commit).
  Status update_msi_route(uint32_t gsi, uint64_t addr, uint32_t data);
  // Frees an MSI GSI; unregister its irqfds first.
  Status remove_route(uint32_t gsi);
  // Sends the current table (e.g. to install the defaults explicitly).
  Status commit();

  // The table as the next commit would send it: irqchip routes, then MSI routes by GSI.
  std::vector<kvm_irq_routing_entry> table() const;
  size_t msi_routes() const;

 private:
  std::vector<kvm_irq_routing_entry> build_locked(
      const std::map<uint32_t, kvm_irq_routing_entry>&) const;
  Status commit_locked(const std::map<uint32_t, kvm_irq_routing_entry>& msi);

  IrqChip& chip_;
  Options opt_;
  mutable std::mutex mu_;
  std::vector<kvm_irq_routing_entry> fixed_;
  std::map<uint32_t, kvm_irq_routing_entry> msi_;  // allocated GSI -> route
};

}  // namespace iovirt
