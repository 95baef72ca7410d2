// An x86-64 KVM virtual machine: memory, in-kernel irqchip, vCPU threads, legacy devices, the
// PCI root complex, and the main thread's event loop (signals, console input, exit requests).
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "iovirt/core/bus.hpp"
#include "iovirt/core/error.hpp"
#include "iovirt/core/eventfd.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/core/kvm.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/vmm/config.hpp"

namespace iovirt::virtio {
class VirtioDevice;
class VirtioPciDevice;
}  // namespace iovirt::virtio

namespace iovirt {

class Serial16550;
class I8042;
class AcpiPmDevice;
class MetricsServer;
class PciRoot;
class KvmIrqChip;
class GsiRouter;
class PassthroughDevices;

enum class VmExit { None, Poweroff, Reset, Signal, Error };

// Exit status of `iovirt run` for each way a VM can end (documented in `iovirt --help`).
int exit_status(VmExit reason, int signo);

class Vm final {
 public:
  static Result<std::unique_ptr<Vm>> create(const VmConfig& cfg);
  ~Vm();
  Vm(const Vm&) = delete;
  Vm& operator=(const Vm&) = delete;

  // Starts the vCPUs and serves the main loop until the guest powers off or resets, a signal
  // arrives, or a vCPU fails. Returns the process exit status.
  int run();

  // Requests the VM to stop (thread-safe; the first reason wins).
  void request_exit(VmExit reason, std::string why = {});

  MetricsRegistry& metrics() { return metrics_; }

 private:
  Vm(Kvm kvm, VmFd vm, GuestMemory mem, VmConfig cfg);
  Status build();
  void vcpu_thread(size_t index);
  void handle_io(kvm_run* run);
  void handle_mmio(kvm_run* run);
  void stop_vcpus();
  void note_unclaimed(const char* bus, uint64_t addr, bool write);
  Status add_virtio_devices();

  VmConfig cfg_;
  Kvm kvm_;
  VmFd vm_;
  GuestMemory mem_;
  Bus pio_{"pio"};
  Bus mmio_{"mmio"};
  MetricsRegistry metrics_;
  std::unique_ptr<MetricsServer> metrics_server_;
  std::unique_ptr<Serial16550> serial_;
  std::unique_ptr<I8042> i8042_;
  std::unique_ptr<AcpiPmDevice> pm_;
  // Interrupt routing for PCI devices (MSI-X -> GSI -> irqfd).
  std::unique_ptr<KvmIrqChip> irqchip_;
  std::unique_ptr<GsiRouter> router_;
  // A virtio device and its transport; the transport goes first (it stops the device).
  struct VirtioSlot {
    std::unique_ptr<virtio::VirtioDevice> dev;
    std::unique_ptr<virtio::VirtioPciDevice> pci;
    VirtioSlot();
    VirtioSlot(VirtioSlot&&) noexcept;
    ~VirtioSlot();
  };
  std::vector<VirtioSlot> virtio_;
  // VFIO passthrough devices (--device), with their container, DMA map and BAR memory slots.
  std::unique_ptr<PassthroughDevices> passthrough_;
  // Declared after the devices: destroyed first, it takes their BARs off the buses.
  std::unique_ptr<PciRoot> pci_;
  std::vector<VcpuFd> vcpus_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stopping_{false};
  std::mutex exit_mu_;
  VmExit exit_ = VmExit::None;
  std::string exit_why_;
  int exit_signal_ = 0;
  std::unique_ptr<EventFd> exit_event_;

  struct VcpuCounters {
    Counter* io;
    Counter* mmio;
    Counter* intr;
    Counter* other;
  };
  std::vector<VcpuCounters> counters_;
  Counter* unclaimed_pio_ = nullptr;
  Counter* unclaimed_mmio_ = nullptr;
  std::mutex unclaimed_mu_;
  std::set<uint64_t> unclaimed_seen_;
};

}  // namespace iovirt
