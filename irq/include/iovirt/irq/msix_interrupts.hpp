// MSI-X vectors of one device bound to KVM: per vector an eventfd registered as a KVM irqfd on
// the vector's GSI route. That eventfd (notifier()) is the one to hand to VFIO
// (VFIO_DEVICE_SET_IRQS) or a vhost backend (VHOST_SET_VRING_CALL) so their interrupts reach the
// guest without passing through iovirt; emulated devices call trigger().
//
// Route lifecycle, driven by MsixTable's change hook (installed by create()):
//  - a vector that becomes deliverable (MSI-X enabled, function and entry unmasked) gets a GSI
//    route for its address/data (allocated on first use) and its irqfd assigned;
//  - an address/data change of a routed vector updates its route in one KVM_SET_GSI_ROUTING
//    (KVM re-points the live irqfd);
//  - masking (entry mask, Function Mask) DEASSIGNS the irqfd and keeps the route. Why deassign:
//    KVM has no "masked" state for an irqfd route, and an MSI route always delivers; a removed
//    irqfd leaves later eventfd writes sitting in the eventfd counter, and KVM_IRQFD assign
//    injects once if the counter is non-zero, so a message signalled by VFIO/vhost while masked
//    is delivered exactly once at unmask, as PCI requires of a pending vector;
//  - disabling MSI-X also frees the routes (GSIs are a shared, bounded resource).
// trigger() on a masked vector sets the vector's PBA bit instead of writing the eventfd; on unmask
// the pending vectors are taken from the PBA (MsixTable::take_deliverable_pending) and sent.
// Limitation: a message from an external signaller (VFIO/vhost) while masked lives in the
// eventfd counter and is delivered at unmask, but is not reflected in the emulated PBA.
//
// Threading: trigger() may run on any thread. Its fast path (vector deliverable) is one atomic
// load, one eventfd write and a counter increment. The masked path, and every table change, take
// lock(): the owning device must hold lock() around its MsixTable accesses (bar_read/bar_write/
// config_written) so a trigger cannot race an unmask (the hook runs under the same lock; it is
// recursive).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/eventfd.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/core/pci_msix.hpp"
#include "iovirt/irq/gsi_router.hpp"
#include "iovirt/irq/irq_chip.hpp"

namespace iovirt {

// One vector's binding: its eventfd, its route and whether the irqfd is live.
class MsiVector final {
 public:
  MsiVector(EventFd fd, Counter& triggers, Counter& masked_pending)
      : fd_(std::move(fd)), triggers_(&triggers), masked_pending_(&masked_pending) {}

  int notifier() const { return fd_.fd(); }
  std::optional<uint32_t> gsi() const { return gsi_; }
  bool irqfd_assigned() const { return irqfd_; }
  bool deliverable() const { return deliverable_.load(std::memory_order_acquire); }

 private:
  friend class MsixInterrupts;
  EventFd fd_;
  Counter* triggers_;
  Counter* masked_pending_;
  std::optional<uint32_t> gsi_;
  uint64_t addr_ = 0;
  uint32_t data_ = 0;
  bool irqfd_ = false;
  std::atomic<bool> deliverable_{false};
};

class MsixInterrupts final {
 public:
  // Binds every vector of `table` and installs the table's change hook. table, router, chip and
  // metrics must outlive the result. `device` labels the metrics.
  static Result<std::unique_ptr<MsixInterrupts>> create(MsixTable& table, GsiRouter& router,
                                                        IrqChip& chip, MetricsRegistry& metrics,
                                                        const std::string& device);
  // Removes the hook, deassigns irqfds and frees routes.
  ~MsixInterrupts();
  MsixInterrupts(const MsixInterrupts&) = delete;
  MsixInterrupts& operator=(const MsixInterrupts&) = delete;

  uint16_t num_vectors() const { return static_cast<uint16_t>(vectors_.size()); }
  // The vector's eventfd (-1 for an out-of-range vector).
  int notifier(uint16_t vector) const;
  const MsiVector* vector(uint16_t v) const;

  // Sends the vector's message (eventfd write), or marks it pending in the PBA when it is masked.
  // An out-of-range vector is ignored (false); true when the message was sent now.
  bool trigger(uint16_t vector);

  // The MsixTable change hook: brings routes/irqfds in line with the table for one vector (or
  // msix::kAllVectors) and sends pending vectors that became deliverable.
  void on_table_change(uint16_t vector);
  // The same, reporting the first failure (on_table_change logs and counts failures).
  Status sync(uint16_t vector);

  std::unique_lock<std::recursive_mutex> lock() { return std::unique_lock(mu_); }

 private:
  MsixInterrupts(MsixTable& table, GsiRouter& router, IrqChip& chip, Counter& errors)
      : table_(table), router_(router), chip_(chip), errors_(errors) {}
  Status sync_one(uint16_t v);
  Status deliver_pending();

  MsixTable& table_;
  GsiRouter& router_;
  IrqChip& chip_;
  Counter& errors_;
  std::recursive_mutex mu_;
  std::vector<std::unique_ptr<MsiVector>> vectors_;
};

}  // namespace iovirt
