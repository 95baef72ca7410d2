// The VM's VFIO passthrough devices (`--device path=...`) and everything they share: the checks
// made before any fd is opened, one container, the IOMMU groups, the KVM-VFIO device, the DMA map
// of guest RAM and the KVM memory slots for BAR memory.
//
// Bring-up order (create): every device's host checks (driver, IOMMU group viability, /dev/vfio)
// and the locked-memory budget, so a misconfigured host fails with one line before anything
// changes; the container and each device's group (a group shared by two devices is opened once);
// every group handed to the KVM-VFIO device (KVM then knows the devices do DMA, for cache
// coherency and irq bypass); all guest RAM mapped for DMA at iova = guest physical address; then
// each device reset, its config space virtualized and plugged into the root complex.
// Teardown (destructor) reverses it: each device detached (MSI/MSI-X off, BAR slots removed,
// reset), DMA unmapped, groups removed from KVM, fds closed — so on exit the functions are back
// on vfio-pci, reset, with no mapping left.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/core/kvm.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/core/sysfs.hpp"
#include "iovirt/vmm/config.hpp"

namespace iovirt {

class PciRoot;
class GsiRouter;
class IrqChip;

class PassthroughDevices {
 public:
  struct Env {
    const VmFd& vm;
    const GuestMemory& mem;
    PciRoot& root;
    GsiRouter& router;
    IrqChip& chip;
    MetricsRegistry& metrics;
    uint32_t first_slot;  // KVM memory slots from here up are free for BAR memory
    std::string sysfs_root = "/sys";
    std::string dev_root = "/dev";
  };
  static Result<std::unique_ptr<PassthroughDevices>> create(
      const std::vector<DeviceOption>& devices, const Env& env);
  ~PassthroughDevices();
  PassthroughDevices(const PassthroughDevices&) = delete;
  PassthroughDevices& operator=(const PassthroughDevices&) = delete;

  // Reads the host's interrupt count per device vector (/proc/interrupts: the host takes the
  // device's MSI before KVM injects it, unless it is posted) into the iovirt_vfio_host_interrupts
  // gauges. A thread samples every 2 s; teardown logs the last counts per vector.
  void sample_interrupts();

  struct State;

 private:
  explicit PassthroughDevices(std::unique_ptr<State> s);
  std::unique_ptr<State> s_;
};

}  // namespace iovirt
