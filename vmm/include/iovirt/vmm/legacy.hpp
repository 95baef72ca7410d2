// Legacy PC devices on port I/O: 16550A UART, i8042 (reset line only), and the ACPI
// hardware-reduced sleep/reset registers. They see (offset, data) and raise lines through
// callbacks: none of them knows about KVM.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>

#include "iovirt/core/bus.hpp"

namespace iovirt {

// 8250/16550A UART (National Semiconductor PC16550D data sheet register set).
class Serial16550 final : public BusDevice {
 public:
  using IrqLine = std::function<void(bool level)>;
  using Output = std::function<void(uint8_t byte)>;
  Serial16550(IrqLine irq, Output out) : irq_(std::move(irq)), out_(std::move(out)) {}

  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

  // Host -> guest bytes (stdin). Bytes beyond the receive buffer's capacity are dropped and
  // counted, as a real UART overruns.
  void enqueue_input(std::span<const uint8_t> bytes);
  uint64_t overruns() const;

  static constexpr size_t kRxCapacity = 4096;

 private:
  uint8_t read_reg(uint8_t reg);
  void write_reg(uint8_t reg, uint8_t v);
  void update_irq();  // with mu_ held

  mutable std::mutex mu_;
  IrqLine irq_;
  Output out_;
  std::deque<uint8_t> rx_;
  uint8_t ier_ = 0, lcr_ = 0, mcr_ = 0, scr_ = 0, dll_ = 0x0c, dlm_ = 0, fcr_ = 0;
  bool thr_pending_ = false;  // THRE interrupt latched until IIR read or THR write
  bool irq_level_ = false;
  uint64_t overruns_ = 0;
};

// i8042 keyboard controller: only what firmware-less guests use, the CPU reset pulse
// (command 0xfe on port 0x64). Port 0x60 at offset 0, 0x64 at offset 4.
class I8042 final : public BusDevice {
 public:
  explicit I8042(std::function<void()> on_reset) : on_reset_(std::move(on_reset)) {}
  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

 private:
  std::function<void()> on_reset_;
};

// ACPI hardware-reduced registers described by the FADT: sleep control (+0), sleep status (+1),
// reset (+2). Writing SLP_EN with SLP_TYP == S5 powers off; the reset value resets.
class AcpiPmDevice final : public BusDevice {
 public:
  AcpiPmDevice(std::function<void()> on_poweroff, std::function<void()> on_reset)
      : on_poweroff_(std::move(on_poweroff)), on_reset_(std::move(on_reset)) {}
  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

 private:
  std::function<void()> on_poweroff_, on_reset_;
};

}  // namespace iovirt
