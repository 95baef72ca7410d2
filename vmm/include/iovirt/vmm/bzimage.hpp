// x86 Linux boot protocol (Documentation/arch/x86/boot.rst): bzImage parsing and the zero page.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "iovirt/core/error.hpp"

namespace iovirt {

// The fields of the setup header iovirt needs, parsed and validated from an untrusted file.
struct BzImage {
  uint16_t protocol = 0;         // e.g. 0x020f
  uint8_t setup_sects = 0;
  uint8_t loadflags = 0;
  uint16_t xloadflags = 0;
  uint32_t initrd_addr_max = 0;
  uint32_t kernel_alignment = 0;
  uint32_t cmdline_size = 0;
  uint32_t init_size = 0;        // memory the kernel needs from its load address
  uint64_t pref_address = 0;
  std::span<const uint8_t> setup;    // the real-mode part incl. header (copied into the zero page)
  std::span<const uint8_t> kernel;   // the protected-mode part, loaded at 1 MiB
};

// Parses `image` (the whole file). Fails, naming the rule broken, on anything that is not a
// 64-bit-bootable bzImage: too short, no 0xAA55 boot flag, no "HdrS", protocol < 2.12, no
// XLF_KERNEL_64, setup larger than the file.
Result<BzImage> parse_bzimage(std::span<const uint8_t> image);

// Offsets in struct boot_params (arch/x86/include/uapi/asm/bootparam.h).
namespace zp {
inline constexpr size_t kAcpiRsdpAddr = 0x070;
inline constexpr size_t kE820Entries = 0x1e8;
inline constexpr size_t kSetupHeader = 0x1f1;
inline constexpr size_t kTypeOfLoader = 0x210;
inline constexpr size_t kLoadFlags = 0x211;
inline constexpr size_t kRamdiskImage = 0x218;
inline constexpr size_t kRamdiskSize = 0x21c;
inline constexpr size_t kHeapEndPtr = 0x224;
inline constexpr size_t kCmdLinePtr = 0x228;
inline constexpr size_t kE820Table = 0x2d0;
inline constexpr size_t kE820Max = 128;
inline constexpr size_t kSize = 4096;
}  // namespace zp

enum class E820Type : uint32_t { Ram = 1, Reserved = 2, Acpi = 3 };

struct [[gnu::packed]] E820Entry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;
};
static_assert(sizeof(E820Entry) == 20);

struct ZeroPageParams {
  uint64_t cmdline_gpa = 0;
  uint32_t cmdline_len = 0;     // without the NUL
  uint64_t initrd_gpa = 0;
  uint64_t initrd_size = 0;
  uint64_t rsdp_gpa = 0;
  std::vector<E820Entry> e820;
};

// Builds the 4 KiB zero page: the image's setup header copied in, loader fields filled.
Result<std::vector<uint8_t>> build_zero_page(const BzImage& img, const ZeroPageParams& p);

}  // namespace iovirt
