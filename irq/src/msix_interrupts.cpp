#include "iovirt/irq/msix_interrupts.hpp"

#include <string>

#include "iovirt/core/log.hpp"

namespace iovirt {

Result<std::unique_ptr<MsixInterrupts>> MsixInterrupts::create(MsixTable& table, GsiRouter& router,
                                                               IrqChip& chip,
                                                               MetricsRegistry& metrics,
                                                               const std::string& device) {
  Counter& errors =
      metrics.counter("iovirt_irq_route_errors_total",
                      "MSI-X route or irqfd updates that KVM refused", {{"device", device}});
  std::unique_ptr<MsixInterrupts> m(new MsixInterrupts(table, router, chip, errors));
  for (uint16_t v = 0; v < table.num_vectors(); ++v) {
    auto fd = EventFd::create();
    if (!fd)
      return std::unexpected(
          std::move(fd.error()).context("MSI-X " + device + " vector " + std::to_string(v)));
    const Labels labels{{"device", device}, {"vector", std::to_string(v)}};
    Counter& triggers =
        metrics.counter("iovirt_irq_vector_triggers_total",
                        "Messages requested by the device model per vector", labels);
    Counter& pending =
        metrics.counter("iovirt_irq_vector_masked_pending_total",
                        "Messages held in the PBA because the vector was masked", labels);
    m->vectors_.push_back(std::make_unique<MsiVector>(std::move(*fd), triggers, pending));
  }
  if (auto s = m->sync(msix::kAllVectors); !s) return std::unexpected(std::move(s.error()));
  MsixInterrupts* self = m.get();
  table.set_change_hook([self](uint16_t v) { self->on_table_change(v); });
  return m;
}

MsixInterrupts::~MsixInterrupts() {
  table_.set_change_hook(nullptr);
  std::lock_guard lock(mu_);
  for (auto& vp : vectors_) {
    MsiVector& v = *vp;
    if (v.irqfd_ && v.gsi_) (void)chip_.unregister_irqfd(v.fd_.fd(), *v.gsi_);
    if (v.gsi_) (void)router_.remove_route(*v.gsi_);
  }
}

int MsixInterrupts::notifier(uint16_t vector) const {
  return vector < vectors_.size() ? vectors_[vector]->notifier() : -1;
}

const MsiVector* MsixInterrupts::vector(uint16_t v) const {
  return v < vectors_.size() ? vectors_[v].get() : nullptr;
}

bool MsixInterrupts::trigger(uint16_t vector) {
  if (vector >= vectors_.size()) return false;
  MsiVector& v = *vectors_[vector];
  v.triggers_->inc();
  if (v.deliverable()) {
    // An eventfd write only fails on counter overflow: the interrupt is already pending then.
    (void)v.fd_.write(1);
    return true;
  }
  std::lock_guard lock(mu_);
  if (v.deliverable()) {  // unmasked while we waited for the lock
    (void)v.fd_.write(1);
    return true;
  }
  table_.set_pending(vector);
  v.masked_pending_->inc();
  return false;
}

Status MsixInterrupts::sync_one(uint16_t vector) {
  MsiVector& v = *vectors_[vector];
  const MsixVector e = table_.entry(vector);
  const bool deliverable = table_.vector_deliverable(vector);
  const std::string what = "MSI-X vector " + std::to_string(vector);

  if (!deliverable) {
    // Mask first, so no message is sent on a stale route.
    v.deliverable_.store(false, std::memory_order_release);
    if (v.irqfd_) {
      if (auto s = chip_.unregister_irqfd(v.fd_.fd(), *v.gsi_); !s)
        return std::unexpected(std::move(s.error()).context(what + " mask"));
      v.irqfd_ = false;
    }
    if (!table_.enabled() && v.gsi_) {
      if (auto s = router_.remove_route(*v.gsi_); !s)
        return std::unexpected(std::move(s.error()).context(what + " disable"));
      v.gsi_.reset();
    }
    return {};
  }

  if (!v.gsi_) {
    auto gsi = router_.add_msi_route(e.address, e.data);
    if (!gsi) return std::unexpected(std::move(gsi.error()).context(what + " route"));
    v.gsi_ = *gsi;
  } else if (v.addr_ != e.address || v.data_ != e.data) {
    if (auto s = router_.update_msi_route(*v.gsi_, e.address, e.data); !s)
      return std::unexpected(std::move(s.error()).context(what + " route update"));
  }
  v.addr_ = e.address;
  v.data_ = e.data;
  if (!v.irqfd_) {
    if (auto s = chip_.register_irqfd(v.fd_.fd(), *v.gsi_); !s)
      return std::unexpected(std::move(s.error()).context(what + " unmask"));
    v.irqfd_ = true;
  }
  v.deliverable_.store(true, std::memory_order_release);
  return {};
}

Status MsixInterrupts::deliver_pending() {
  for (uint16_t vector : table_.take_deliverable_pending()) {
    if (vector >= vectors_.size()) continue;
    // Deliverable and synced above, so the irqfd is live.
    if (auto s = vectors_[vector]->fd_.write(1); !s)
      return std::unexpected(
          std::move(s.error()).context("MSI-X vector " + std::to_string(vector) + " pending"));
  }
  return {};
}

Status MsixInterrupts::sync(uint16_t vector) {
  std::lock_guard lock(mu_);
  Status first;
  auto keep = [&](Status s) {
    if (!s && first) first = std::move(s);
  };
  if (vector == msix::kAllVectors) {
    for (uint16_t v = 0; v < vectors_.size(); ++v) keep(sync_one(v));
  } else if (vector < vectors_.size()) {
    keep(sync_one(vector));
  }
  keep(deliver_pending());
  return first;
}

void MsixInterrupts::on_table_change(uint16_t vector) {
  if (auto s = sync(vector); !s) {
    errors_.inc();
    log_error(s.error().message());
  }
}

}  // namespace iovirt
