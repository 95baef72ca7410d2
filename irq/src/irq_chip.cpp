#include "iovirt/irq/irq_chip.hpp"

#include "iovirt/core/kvm.hpp"

namespace iovirt {

Status KvmIrqChip::set_gsi_routing(std::span<const kvm_irq_routing_entry> entries) {
  return vm_.set_gsi_routing(entries);
}
Status KvmIrqChip::register_irqfd(int eventfd, uint32_t gsi, int resamplefd) {
  return vm_.register_irqfd(eventfd, gsi, resamplefd);
}
Status KvmIrqChip::unregister_irqfd(int eventfd, uint32_t gsi) {
  return vm_.unregister_irqfd(eventfd, gsi);
}
Status KvmIrqChip::signal_msi(uint64_t addr, uint32_t data) {
  return vm_.signal_msi(addr, data);
}

Status KvmIrqChip::register_ioeventfd(int eventfd, const IoEventFdSpec& spec) {
  return vm_.register_ioeventfd(eventfd, spec);
}
Status KvmIrqChip::unregister_ioeventfd(int eventfd, const IoEventFdSpec& spec) {
  return vm_.unregister_ioeventfd(eventfd, spec);
}

}  // namespace iovirt
