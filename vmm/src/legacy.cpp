#include "iovirt/vmm/legacy.hpp"

#include <algorithm>

#include "iovirt/core/log.hpp"
#include "iovirt/vmm/acpi.hpp"

namespace iovirt {

namespace {
// Register numbers (offset from the base port).
enum Reg : uint8_t { kRbrThr = 0, kIer = 1, kIirFcr = 2, kLcr = 3, kMcr = 4, kLsr = 5, kMsr = 6, kScr = 7 };
constexpr uint8_t kIerRda = 0x01, kIerThre = 0x02;
constexpr uint8_t kIirNone = 0x01, kIirThre = 0x02, kIirRda = 0x04, kIirFifo = 0xc0;
constexpr uint8_t kLcrDlab = 0x80;
constexpr uint8_t kLsrDr = 0x01, kLsrThre = 0x20, kLsrTemt = 0x40;
constexpr uint8_t kMcrLoop = 0x10;
constexpr uint8_t kMsrDcd = 0x80, kMsrDsr = 0x20, kMsrCts = 0x10;
}  // namespace

void Serial16550::read(uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), 0);
  if (data.size() != 1 || offset > 7) return;
  std::lock_guard lock(mu_);
  data[0] = read_reg(static_cast<uint8_t>(offset));
}

void Serial16550::write(uint64_t offset, std::span<const uint8_t> data) {
  if (data.size() != 1 || offset > 7) return;
  std::lock_guard lock(mu_);
  write_reg(static_cast<uint8_t>(offset), data[0]);
}

uint8_t Serial16550::read_reg(uint8_t reg) {
  uint8_t v = 0;
  switch (reg) {
    case kRbrThr:
      if (lcr_ & kLcrDlab) return dll_;
      if (!rx_.empty()) {
        v = rx_.front();
        rx_.pop_front();
      }
      update_irq();
      return v;
    case kIer:
      return (lcr_ & kLcrDlab) ? dlm_ : ier_;
    case kIirFcr:
      if ((ier_ & kIerRda) && !rx_.empty()) {
        v = kIirRda;
      } else if (thr_pending_) {
        v = kIirThre;
        thr_pending_ = false;  // reading IIR with THRE as the source clears it
        update_irq();
      } else {
        v = kIirNone;
      }
      return static_cast<uint8_t>(v | ((fcr_ & 1) ? kIirFifo : 0));
    case kLcr:
      return lcr_;
    case kMcr:
      return mcr_;
    case kLsr:
      return static_cast<uint8_t>(kLsrThre | kLsrTemt | (rx_.empty() ? 0 : kLsrDr));
    case kMsr:
      if (mcr_ & kMcrLoop) {
        // Loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
        return static_cast<uint8_t>(((mcr_ & 0x01) << 5) | ((mcr_ & 0x02) << 3) | ((mcr_ & 0x04) << 4) |
                                    ((mcr_ & 0x08) << 4));
      }
      return kMsrDcd | kMsrDsr | kMsrCts;
    case kScr:
      return scr_;
    default:
      return 0;
  }
}

void Serial16550::write_reg(uint8_t reg, uint8_t v) {
  switch (reg) {
    case kRbrThr:
      if (lcr_ & kLcrDlab) {
        dll_ = v;
        return;
      }
      if (mcr_ & kMcrLoop) {
        if (rx_.size() < kRxCapacity)
          rx_.push_back(v);
        else
          ++overruns_;
      } else {
        out_(v);
      }
      // The byte left at once: the holding register is empty again.
      thr_pending_ = (ier_ & kIerThre) != 0;
      update_irq();
      return;
    case kIer:
      if (lcr_ & kLcrDlab) {
        dlm_ = v;
        return;
      }
      // Enabling THRE while the holding register is empty raises it straight away.
      if (!(ier_ & kIerThre) && (v & kIerThre)) thr_pending_ = true;
      ier_ = v & 0x0f;
      if (!(ier_ & kIerThre)) thr_pending_ = false;
      update_irq();
      return;
    case kIirFcr:
      fcr_ = v;
      if (v & 0x02) rx_.clear();  // clear receive FIFO
      update_irq();
      return;
    case kLcr:
      lcr_ = v;
      return;
    case kMcr:
      mcr_ = v & 0x1f;
      return;
    case kScr:
      scr_ = v;
      return;
    default:
      return;  // LSR/MSR are read-only
  }
}

void Serial16550::update_irq() {
  bool level = ((ier_ & kIerRda) && !rx_.empty()) || thr_pending_;
  if (level != irq_level_) {
    irq_level_ = level;
    irq_(level);
  }
}

void Serial16550::enqueue_input(std::span<const uint8_t> bytes) {
  std::lock_guard lock(mu_);
  for (uint8_t b : bytes) {
    if (rx_.size() >= kRxCapacity) {
      ++overruns_;
      continue;
    }
    rx_.push_back(b);
  }
  update_irq();
}

uint64_t Serial16550::overruns() const {
  std::lock_guard lock(mu_);
  return overruns_;
}

void I8042::read(uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), 0);
  // Status (0x64): output buffer empty, input buffer empty, system flag set.
  if (offset == 4 && !data.empty()) data[0] = 0x04;
}

void I8042::write(uint64_t offset, std::span<const uint8_t> data) {
  if (log_enabled(LogLevel::Debug) && !data.empty())
    log_debug("i8042 write offset " + std::to_string(offset) + " value " + std::to_string(data[0]));
  if (offset == 4 && data.size() == 1 && data[0] == 0xfe) on_reset_();
}

void AcpiPmDevice::read(uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), 0);
  // Sleep status: WAK_STS (bit 7) reads 0 -- the platform never wakes from S5.
  (void)offset;
}

void AcpiPmDevice::write(uint64_t offset, std::span<const uint8_t> data) {
  if (log_enabled(LogLevel::Debug) && !data.empty())
    log_debug("ACPI PM write offset " + std::to_string(offset) + " size " + std::to_string(data.size()) +
              " value " + std::to_string(data[0]));
  if (data.size() != 1) return;
  uint8_t v = data[0];
  if (offset == 0) {
    bool slp_en = v & 0x20;
    uint8_t slp_typ = (v >> 2) & 0x7;
    if (slp_en && slp_typ == kAcpiS5Type) on_poweroff_();
  } else if (offset == 2 && v == kAcpiResetValue) {
    on_reset_();
  }
}

}  // namespace iovirt
