#include "iovirt/irq/gsi_router.hpp"

#include <cerrno>
#include <string>

namespace iovirt {

namespace {

kvm_irq_routing_entry irqchip_entry(uint32_t gsi, uint32_t chip, uint32_t pin) {
  kvm_irq_routing_entry e{};
  e.gsi = gsi;
  e.type = KVM_IRQ_ROUTING_IRQCHIP;
  e.u.irqchip.irqchip = chip;
  e.u.irqchip.pin = pin;
  return e;
}

kvm_irq_routing_entry msi_entry(uint32_t gsi, uint64_t addr, uint32_t data) {
  kvm_irq_routing_entry e{};
  e.gsi = gsi;
  e.type = KVM_IRQ_ROUTING_MSI;
  e.u.msi.address_lo = static_cast<uint32_t>(addr);
  e.u.msi.address_hi = static_cast<uint32_t>(addr >> 32);
  e.u.msi.data = data;
  return e;
}

}  // namespace

GsiRouter::GsiRouter(IrqChip& chip, Options opt) : chip_(chip), opt_(opt) {
  if (opt_.irqchip_routes) fixed_ = default_irqchip_routes();
}

std::vector<kvm_irq_routing_entry> GsiRouter::default_irqchip_routes() {
  std::vector<kvm_irq_routing_entry> v;
  for (uint32_t i = 0; i < 16; ++i) {
    if (i == 2) continue;  // the slave PIC's cascade input
    v.push_back(i < 8 ? irqchip_entry(i, KVM_IRQCHIP_PIC_MASTER, i)
                      : irqchip_entry(i, KVM_IRQCHIP_PIC_SLAVE, i - 8));
  }
  for (uint32_t i = 0; i < 24; ++i) v.push_back(irqchip_entry(i, KVM_IRQCHIP_IOAPIC, i));
  return v;
}

std::vector<kvm_irq_routing_entry> GsiRouter::build_locked(
    const std::map<uint32_t, kvm_irq_routing_entry>& msi) const {
  std::vector<kvm_irq_routing_entry> v = fixed_;
  v.reserve(fixed_.size() + msi.size());
  for (const auto& [gsi, e] : msi) v.push_back(e);
  return v;
}

Status GsiRouter::commit_locked(const std::map<uint32_t, kvm_irq_routing_entry>& msi) {
  const auto table = build_locked(msi);
  if (auto s = chip_.set_gsi_routing(table); !s)
    return std::unexpected(std::move(s.error()).context("GSI routing commit"));
  msi_ = msi;
  return {};
}

Result<uint32_t> GsiRouter::add_msi_route(uint64_t addr, uint32_t data) {
  std::lock_guard lock(mu_);
  uint32_t gsi = opt_.first_msi_gsi;
  for (const auto& [used, e] : msi_) {  // ordered: the first gap is the lowest free GSI
    if (used != gsi) break;
    ++gsi;
  }
  if (gsi > opt_.max_gsi || gsi < opt_.first_msi_gsi)
    return fail("add MSI route: no free GSI in [" + std::to_string(opt_.first_msi_gsi) + ", " +
                    std::to_string(opt_.max_gsi) + "]",
                ENOSPC);
  auto next = msi_;
  next[gsi] = msi_entry(gsi, addr, data);
  if (auto s = commit_locked(next); !s) return std::unexpected(std::move(s.error()));
  return gsi;
}

Status GsiRouter::update_msi_route(uint32_t gsi, uint64_t addr, uint32_t data) {
  std::lock_guard lock(mu_);
  if (!msi_.contains(gsi))
    return fail("update MSI route: GSI " + std::to_string(gsi) + " is not allocated", ENOENT);
  auto next = msi_;
  next[gsi] = msi_entry(gsi, addr, data);
  return commit_locked(next);
}

Status GsiRouter::remove_route(uint32_t gsi) {
  std::lock_guard lock(mu_);
  if (!msi_.contains(gsi))
    return fail("remove route: GSI " + std::to_string(gsi) + " is not allocated", ENOENT);
  auto next = msi_;
  next.erase(gsi);
  return commit_locked(next);
}

Status GsiRouter::commit() {
  std::lock_guard lock(mu_);
  const auto cur = msi_;
  return commit_locked(cur);
}

std::vector<kvm_irq_routing_entry> GsiRouter::table() const {
  std::lock_guard lock(mu_);
  return build_locked(msi_);
}

size_t GsiRouter::msi_routes() const {
  std::lock_guard lock(mu_);
  return msi_.size();
}

}  // namespace iovirt
