// Fuzzes the passthrough device's config virtualization from both hostile sides at once: the
// device's own config bytes (as VFIO returns them from a real, possibly broken or malicious
// function: capability chains, MSI/MSI-X layouts, BAR type bits) and a guest's config cycles,
// BAR accesses and BAR placements afterwards. Input: 256 config bytes, BAR sizes and flags, IRQ
// counts, then operations. Invariants: nothing crashes or trips a sanitizer, and the guest's view
// always has a walkable capability list.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "fuzz_input.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/core/pci_config.hpp"
#include "iovirt/irq/gsi_router.hpp"
#include "iovirt/irq/recording_irq_chip.hpp"
#include "iovirt/vfio/passthrough.hpp"
#include "iovirt/vfio/testing/recording_transport.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

using iovirt::fuzz::check;
using iovirt::fuzz::Reader;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in(data, size);
  std::vector<uint8_t> config(256);
  for (auto& b : config) b = in.u8();
  iovirt::vfio::testing::RecordingTransport t(config);
  t.set_resettable(in.u8() & 1);
  for (uint32_t bar = 0; bar < 6; ++bar) {
    // Bits 4:0 the size (0: no region; else 16 B .. 1 MiB, bigger would only cost memfd space),
    // bit 6 mmap-able, bit 7 not a power of two.
    const uint8_t sz = in.u8();
    if ((sz & 0x1f) == 0) continue;
    uint64_t bytes = 1ull << (4 + (sz & 0x1f) % 17);
    if (sz & 0x80) bytes += 16;
    t.add_bar(bar, bytes, (sz & 0x40) != 0);
  }
  t.set_irq_count(VFIO_PCI_MSI_IRQ_INDEX, in.u8() % 40);
  t.set_irq_count(VFIO_PCI_MSIX_IRQ_INDEX, in.u16() % 2100);
  t.set_irq_count(VFIO_PCI_INTX_IRQ_INDEX, in.u8() & 1);

  iovirt::vfio::testing::RecordingMemoryMapper mapper;
  mapper.add_reserved(0, 1ull << 30);
  iovirt::RecordingIrqChip chip;
  iovirt::GsiRouter router(chip);
  iovirt::MetricsRegistry metrics;
  auto dev = iovirt::vfio::PassthroughDevice::create(t, mapper, router, chip, metrics, "fuzz");
  if (!dev) return 0;
  auto& d = **dev;
  auto walkable = [&] {
    return iovirt::walk_pci_capabilities(d.config().bytes().first(256)).has_value();
  };
  check(walkable());
  for (int ops = 0; ops < 64 && !in.empty(); ++ops) {
    const uint8_t op = in.u8() % 6;
    const unsigned width = 1u << (in.u8() % 4);  // 1, 2, 4, 8
    uint8_t buf[8] = {};
    switch (op) {
      case 0: {  // config write (any width/alignment: the device must cope)
        const uint16_t off = in.u16() % 4096;
        const uint64_t v = in.u64();
        for (unsigned i = 0; i < width; ++i) buf[i] = static_cast<uint8_t>(v >> (8 * i));
        d.config_write(off, std::span<const uint8_t>(buf, width));
        check(walkable());
        break;
      }
      case 1:
        d.config_read(in.u16() % 4096, std::span<uint8_t>(buf, width));
        break;
      case 2: {  // BAR write
        const int bar = in.u8() % 6;
        const uint64_t off = in.u32();
        const uint64_t v = in.u64();
        for (unsigned i = 0; i < width; ++i) buf[i] = static_cast<uint8_t>(v >> (8 * i));
        d.bar_write(bar, off, std::span<const uint8_t>(buf, width));
        break;
      }
      case 3:
        d.bar_read(in.u8() % 6, in.u32(), std::span<uint8_t>(buf, width));
        break;
      case 4: {  // the root places or removes a BAR
        const int bar = in.u8() % 6;
        const uint64_t addr = in.u64() & ~0xfffull;
        d.bar_decode_changed(bar, (addr & 0x1000) ? std::nullopt : std::optional<uint64_t>(addr));
        break;
      }
      case 5:
        d.detach();
        break;
    }
  }
  d.detach();
  return 0;
}
