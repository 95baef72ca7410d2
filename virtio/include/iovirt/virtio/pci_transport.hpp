// virtio-pci, the modern interface only (virtio 1.2 section 4.1): a PCI function whose single
// memory BAR holds the common, ISR, device-config and notify structures plus the MSI-X table and
// PBA, described by vendor-specific capabilities, with the VIRTIO_PCI_CAP_PCI_CFG window as the
// spec requires.
//
// Doorbells: each queue has its own notify address (notify_off_multiplier 4) and its own
// eventfd, registered as a KVM ioeventfd there whenever the BAR is decoded, so a driver kick
// wakes the device's backend thread without an exit to userspace. A write that does reach
// bar_write (no ioeventfd: unit tests, or registration failed) signals the same eventfd.
// Interrupts: one MSI-X vector per queue plus the config vector, bound to KVM irqfds by
// irq/MsixInterrupts; the per-vector eventfd is what kernel vhost or a vhost-user backend gets
// as its call fd. There is no INTx (Interrupt Pin 0): drivers use MSI-X.
//
// Threading: vCPU threads access config space and the BAR concurrently; the transport serializes
// them with its mutex (MSI-X state under MsixInterrupts::lock()). The device's backend threads
// call notify_queue/notify_config/fail, which take no transport lock (atomics only), so a vCPU
// thread may hold the transport mutex while VirtioDevice::reset() joins those threads.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/eventfd.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/core/pci.hpp"
#include "iovirt/core/pci_msix.hpp"
#include "iovirt/irq/gsi_router.hpp"
#include "iovirt/irq/irq_chip.hpp"
#include "iovirt/irq/msix_interrupts.hpp"
#include "iovirt/virtio/device.hpp"
#include "iovirt/virtio/virtqueue.hpp"

namespace iovirt::virtio {

// Layout of BAR 0, a 64-bit non-prefetchable memory BAR holding every structure: common config,
// ISR, device config, the notify doorbells, and the MSI-X table and PBA.
namespace pci_layout {
inline constexpr int kBar = 0;
inline constexpr uint64_t kCommonOffset = 0x0000;
inline constexpr uint64_t kCommonSize = 0x40;  // through queue_reset (1.2)
inline constexpr uint64_t kIsrOffset = 0x1000;
inline constexpr uint64_t kIsrSize = 1;
inline constexpr uint64_t kDeviceOffset = 0x2000;
inline constexpr uint64_t kDeviceMaxSize = 0x1000;
inline constexpr uint64_t kNotifyOffset = 0x3000;
inline constexpr uint32_t kNotifyMultiplier = 4;
inline constexpr uint64_t kMsixTableOffset = 0x4000;
inline constexpr uint64_t kMsixPbaOffset = 0x6000;
inline constexpr uint64_t kBarSize = 0x8000;
// Bounded by the MSI-X table (one vector per queue + the config vector, 16 bytes each, between
// kMsixTableOffset and kMsixPbaOffset) rather than by the notify area (1024 doorbells).
inline constexpr uint16_t kMaxQueues = (kMsixPbaOffset - kMsixTableOffset) / 16 - 1;
static_assert(kMaxQueues <= (kMsixTableOffset - kNotifyOffset) / kNotifyMultiplier);
}  // namespace pci_layout

// struct virtio_pci_common_cfg offsets (section 4.1.4.3).
namespace common_cfg {
inline constexpr uint32_t kDeviceFeatureSelect = 0x00;
inline constexpr uint32_t kDeviceFeature = 0x04;
inline constexpr uint32_t kDriverFeatureSelect = 0x08;
inline constexpr uint32_t kDriverFeature = 0x0c;
inline constexpr uint32_t kConfigMsixVector = 0x10;
inline constexpr uint32_t kNumQueues = 0x12;
inline constexpr uint32_t kDeviceStatus = 0x14;
inline constexpr uint32_t kConfigGeneration = 0x15;
inline constexpr uint32_t kQueueSelect = 0x16;
inline constexpr uint32_t kQueueSize = 0x18;
inline constexpr uint32_t kQueueMsixVector = 0x1a;
inline constexpr uint32_t kQueueEnable = 0x1c;
inline constexpr uint32_t kQueueNotifyOff = 0x1e;
inline constexpr uint32_t kQueueDesc = 0x20;
inline constexpr uint32_t kQueueDriver = 0x28;
inline constexpr uint32_t kQueueDevice = 0x30;
inline constexpr uint32_t kQueueNotifyData = 0x38;
inline constexpr uint32_t kQueueReset = 0x3a;
}  // namespace common_cfg

// virtio_pci_cap cfg_type values (section 4.1.4).
namespace cap_type {
inline constexpr uint8_t kCommon = 1;
inline constexpr uint8_t kNotify = 2;
inline constexpr uint8_t kIsr = 3;
inline constexpr uint8_t kDevice = 4;
inline constexpr uint8_t kPciCfg = 5;
}  // namespace cap_type

inline constexpr uint16_t kNoVector = 0xffff;  // VIRTIO_MSI_NO_VECTOR
inline constexpr uint16_t kVirtioPciVendor = 0x1af4;
inline constexpr uint16_t kVirtioPciModernDeviceBase = 0x1040;

struct VirtioPciOptions {
  // Feature bits never offered even if the device can serve them (CLI packed=off,
  // event_idx=off, indirect=off).
  uint64_t features_off = 0;
};

class VirtioPciDevice final : public PciDevice, private VirtioInterrupt {
 public:
  // `dev`, `mem`, `router`, `chip` and `metrics` must outlive the result.
  static Result<std::unique_ptr<VirtioPciDevice>> create(VirtioDevice& dev, const GuestMemory& mem,
                                                         GsiRouter& router, IrqChip& chip,
                                                         MetricsRegistry& metrics,
                                                         VirtioPciOptions opt = {});
  // Stops the device and takes the ioeventfds down.
  ~VirtioPciDevice() override;
  VirtioPciDevice(const VirtioPciDevice&) = delete;
  VirtioPciDevice& operator=(const VirtioPciDevice&) = delete;

  // --- PciDevice ---
  std::string_view name() const override { return dev_.name(); }
  PciConfigSpace& config() override { return config_; }
  void config_read(uint16_t offset, std::span<uint8_t> data) override;
  void config_write(uint16_t offset, std::span<const uint8_t> data) override;
  void bar_read(int bar, uint64_t offset, std::span<uint8_t> data) override;
  void bar_write(int bar, uint64_t offset, std::span<const uint8_t> data) override;
  void bar_decode_changed(int bar, std::optional<uint64_t> address) override;

  // --- inspection (tests, metrics) ---
  uint8_t device_status() const { return status_.load(std::memory_order_acquire); }
  uint64_t offered_features() const { return offered_; }
  uint64_t driver_features() const { return driver_features_; }
  bool active() const { return active_; }
  // Whether queue q's doorbell is a live KVM ioeventfd.
  bool ioeventfd_live(uint16_t q) const;
  int kick_fd(uint16_t q) const { return q < kicks_.size() ? kicks_[q].fd() : -1; }
  MsixInterrupts& msix() { return *msix_; }

 private:
  struct QueueRegs {
    uint16_t size = 0;  // as the driver programmed it (starts at the device maximum)
    uint16_t msix_vector = kNoVector;
    bool enabled = false;
    uint64_t desc = 0;
    uint64_t driver = 0;
    uint64_t device = 0;
  };

  VirtioPciDevice(VirtioDevice& dev, const GuestMemory& mem, GsiRouter& router, IrqChip& chip,
                  MetricsRegistry& metrics, uint64_t offered);
  Status init();

  // VirtioInterrupt, called by the device's threads.
  void notify_queue(uint16_t q) override;
  void notify_config() override;
  int queue_irqfd(uint16_t q) override;
  void fail_device(const std::string& reason);

  // Common configuration, under mu_.
  void common_read(uint64_t offset, std::span<uint8_t> data);
  void common_write(uint64_t offset, std::span<const uint8_t> data);
  void snapshot_common(std::array<uint8_t, pci_layout::kCommonSize>& regs);
  void write_common_field(uint32_t field, uint64_t value);
  void write_status(uint8_t v);
  void reset_locked();
  Status activate_locked();
  void bar_access(uint64_t offset, std::span<uint8_t> rdata, std::span<const uint8_t> wdata,
                  bool write);

  // ioeventfds for every queue at `base`; nullopt takes them down.
  void place_doorbells(std::optional<uint64_t> base);

  VirtioDevice& dev_;
  const GuestMemory& mem_;
  IrqChip& chip_;
  GsiRouter& router_;
  MetricsRegistry& metrics_;
  PciConfigSpace config_;
  std::optional<MsixTable> msix_table_;
  std::unique_ptr<MsixInterrupts> msix_;
  uint8_t pci_cfg_cap_ = 0;  // offset of the VIRTIO_PCI_CAP_PCI_CFG capability

  std::mutex mu_;
  const uint64_t offered_;
  uint32_t device_feature_select_ = 0;
  uint32_t driver_feature_select_ = 0;
  uint64_t driver_features_ = 0;
  uint16_t queue_select_ = 0;
  bool active_ = false;
  std::vector<QueueRegs> regs_;
  std::vector<Virtqueue> queues_;
  std::vector<EventFd> kicks_;
  std::optional<uint64_t> doorbell_base_;
  std::vector<bool> doorbell_live_;

  // Touched by backend threads.
  std::atomic<uint8_t> status_{0};
  std::atomic<uint8_t> isr_{0};
  std::atomic<uint8_t> config_generation_{0};
  std::atomic<uint16_t> config_vector_{kNoVector};
  std::unique_ptr<std::atomic<uint16_t>[]> queue_vectors_;
  Counter* device_failures_;
};

}  // namespace iovirt::virtio
