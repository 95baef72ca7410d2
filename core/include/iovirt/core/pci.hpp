// A PCI function as the root complex sees it: a config space and up to six BARs.
// Emulated devices (virtio-pci) and passthrough devices (VFIO) both implement this.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "iovirt/core/pci_config.hpp"
#include "iovirt/core/pci_msix.hpp"

namespace iovirt {

class PciDevice {
 public:
  virtual ~PciDevice() = default;

  virtual std::string_view name() const = 0;
  virtual PciConfigSpace& config() = 0;

  // Guest config cycles. The defaults go through config(); a passthrough device overrides them
  // to forward some registers to the real function. Sizes and alignment as PciConfigSpace::read.
  virtual void config_read(uint16_t offset, std::span<uint8_t> data) {
    config().read(offset, data);
  }
  virtual void config_write(uint16_t offset, std::span<const uint8_t> data) {
    config().write(offset, data);
    config_written(offset, data.size());
  }
  // Called by the default config_write after the bytes landed (e.g. for MSI-X Enable).
  virtual void config_written(uint16_t /*offset*/, size_t /*size*/) {}

  // An access of data.size() bytes (1, 2, 4 or 8) at `offset` inside BAR `bar`. Defaults: reads
  // all-ones, writes dropped.
  virtual void bar_read(int /*bar*/, uint64_t /*offset*/, std::span<uint8_t> data) {
    for (auto& b : data) b = 0xff;
  }
  virtual void bar_write(int /*bar*/, uint64_t /*offset*/, std::span<const uint8_t> /*data*/) {}

  // The root complex started (address) or stopped (nullopt) decoding BAR `bar` on its bus: the
  // place to move ioeventfds or a passthrough BAR's memory slot. Called with the root's lock
  // held: do not call back into the root from here.
  virtual void bar_decode_changed(int /*bar*/, std::optional<uint64_t> /*address*/) {}
};

}  // namespace iovirt
