// An IrqChip that records what KVM would have been told: the last routing table, the live
// irqfds and every call. For unit tests of anything above the irq layer.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "iovirt/irq/irq_chip.hpp"

namespace iovirt {

class RecordingIrqChip final : public IrqChip {
 public:
  struct Msi {
    uint64_t addr;
    uint32_t data;
    bool operator==(const Msi&) const = default;
  };

  Status set_gsi_routing(std::span<const kvm_irq_routing_entry> entries) override {
    std::lock_guard lock(mu_);
    if (fail_routing_) return fail("KVM_SET_GSI_ROUTING (injected failure)", EINVAL);
    routes_.assign(entries.begin(), entries.end());
    ++routing_commits_;
    return {};
  }
  Status register_irqfd(int eventfd, uint32_t gsi, int resamplefd = -1) override {
    std::lock_guard lock(mu_);
    if (irqfds_.contains(eventfd)) return fail("KVM_IRQFD assign: already assigned", EBUSY);
    irqfds_[eventfd] = {gsi, resamplefd};
    ++irqfd_assigns_;
    return {};
  }
  Status unregister_irqfd(int eventfd, uint32_t gsi) override {
    std::lock_guard lock(mu_);
    auto it = irqfds_.find(eventfd);
    if (it == irqfds_.end() || it->second.first != gsi)
      return fail("KVM_IRQFD deassign: not assigned", ENOENT);
    irqfds_.erase(it);
    ++irqfd_deassigns_;
    return {};
  }
  Status signal_msi(uint64_t addr, uint32_t data) override {
    std::lock_guard lock(mu_);
    msis_.push_back({addr, data});
    return {};
  }

  Status register_ioeventfd(int eventfd, const IoEventFdSpec& spec) override {
    std::lock_guard lock(mu_);
    for (const auto& [fd, sp] : ioeventfds_)
      if (sp.addr == spec.addr && sp.pio == spec.pio && sp.datamatch == spec.datamatch &&
          (!sp.datamatch || sp.data == spec.data))
        return fail("KVM_IOEVENTFD assign: address already taken", EEXIST);
    ioeventfds_.emplace_back(eventfd, spec);
    return {};
  }
  Status unregister_ioeventfd(int eventfd, const IoEventFdSpec& spec) override {
    std::lock_guard lock(mu_);
    for (auto it = ioeventfds_.begin(); it != ioeventfds_.end(); ++it) {
      if (it->first == eventfd && it->second.addr == spec.addr && it->second.pio == spec.pio &&
          it->second.len == spec.len) {
        ioeventfds_.erase(it);
        return {};
      }
    }
    return fail("KVM_IOEVENTFD deassign: not assigned", ENOENT);
  }

  // --- inspection ---
  // Live ioeventfds as (eventfd, spec), in assignment order.
  std::vector<std::pair<int, IoEventFdSpec>> ioeventfds() const {
    std::lock_guard lock(mu_);
    return ioeventfds_;
  }
  std::vector<kvm_irq_routing_entry> routes() const {
    std::lock_guard lock(mu_);
    return routes_;
  }
  std::optional<kvm_irq_routing_entry> route(uint32_t gsi) const {
    std::lock_guard lock(mu_);
    for (const auto& e : routes_)
      if (e.gsi == gsi && e.type == KVM_IRQ_ROUTING_MSI) return e;
    return std::nullopt;
  }
  // The GSI an eventfd is assigned to, if it is.
  std::optional<uint32_t> irqfd_gsi(int eventfd) const {
    std::lock_guard lock(mu_);
    auto it = irqfds_.find(eventfd);
    if (it == irqfds_.end()) return std::nullopt;
    return it->second.first;
  }
  // The resamplefd an assigned irqfd carries (-1: an edge irqfd); nullopt when not assigned.
  std::optional<int> irqfd_resamplefd(int eventfd) const {
    std::lock_guard lock(mu_);
    auto it = irqfds_.find(eventfd);
    if (it == irqfds_.end()) return std::nullopt;
    return it->second.second;
  }
  size_t irqfd_count() const {
    std::lock_guard lock(mu_);
    return irqfds_.size();
  }
  unsigned routing_commits() const {
    std::lock_guard lock(mu_);
    return routing_commits_;
  }
  unsigned irqfd_assigns() const {
    std::lock_guard lock(mu_);
    return irqfd_assigns_;
  }
  unsigned irqfd_deassigns() const {
    std::lock_guard lock(mu_);
    return irqfd_deassigns_;
  }
  std::vector<Msi> msis() const {
    std::lock_guard lock(mu_);
    return msis_;
  }
  void fail_routing(bool on) {
    std::lock_guard lock(mu_);
    fail_routing_ = on;
  }

 private:
  mutable std::mutex mu_;
  std::vector<kvm_irq_routing_entry> routes_;
  std::map<int, std::pair<uint32_t, int>> irqfds_;  // eventfd -> (gsi, resamplefd)
  std::vector<Msi> msis_;
  std::vector<std::pair<int, IoEventFdSpec>> ioeventfds_;
  unsigned routing_commits_ = 0;
  unsigned irqfd_assigns_ = 0;
  unsigned irqfd_deassigns_ = 0;
  bool fail_routing_ = false;
};

}  // namespace iovirt
