#include "iovirt/vmm/bzimage.hpp"

#include <cstring>

namespace iovirt {

namespace {

constexpr size_t kHdrBootFlag = 0x1fe;
constexpr size_t kHdrMagic = 0x202;
constexpr size_t kHdrVersion = 0x206;
constexpr size_t kHdrJumpEnd = 0x201;  // byte: length of the header past 0x202
constexpr uint32_t kHdrS = 0x53726448;  // "HdrS"
constexpr uint16_t kXlfKernel64 = 1u << 0;
constexpr uint8_t kLoadedHigh = 1u << 0;
constexpr uint8_t kCanUseHeap = 1u << 7;

template <class T>
T get(std::span<const uint8_t> b, size_t off) {
  T v;
  std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}
template <class T>
void put(std::vector<uint8_t>& b, size_t off, T v) {
  std::memcpy(b.data() + off, &v, sizeof v);
}

}  // namespace

Result<BzImage> parse_bzimage(std::span<const uint8_t> image) {
  // The header we read ends at 0x268; anything shorter is not a modern bzImage.
  if (image.size() < 0x268) return fail("not a bzImage: file is only " + std::to_string(image.size()) + " bytes");
  if (get<uint16_t>(image, kHdrBootFlag) != 0xaa55) return fail("not a bzImage: no 0xAA55 boot flag at 0x1fe");
  if (get<uint32_t>(image, kHdrMagic) != kHdrS) return fail("not a bzImage: no \"HdrS\" magic at 0x202");
  BzImage img;
  img.protocol = get<uint16_t>(image, kHdrVersion);
  if (img.protocol < 0x020c) {
    char v[16];
    std::snprintf(v, sizeof v, "%u.%02u", img.protocol >> 8, img.protocol & 0xff);
    return fail(std::string("bzImage boot protocol ") + v + " is too old: 64-bit entry needs 2.12");
  }
  img.setup_sects = image[0x1f1] ? image[0x1f1] : 4;
  img.loadflags = image[0x211];
  img.initrd_addr_max = get<uint32_t>(image, 0x22c);
  img.kernel_alignment = get<uint32_t>(image, 0x230);
  img.xloadflags = get<uint16_t>(image, 0x236);
  img.cmdline_size = get<uint32_t>(image, 0x238);
  img.pref_address = get<uint64_t>(image, 0x258);
  img.init_size = get<uint32_t>(image, 0x260);
  if (!(img.xloadflags & kXlfKernel64)) return fail("bzImage has no 64-bit entry point (XLF_KERNEL_64 clear)");
  if (!(img.loadflags & kLoadedHigh)) return fail("bzImage is not loadable at 1 MiB (LOADED_HIGH clear)");
  size_t setup_bytes = (static_cast<size_t>(img.setup_sects) + 1) * 512;
  if (setup_bytes >= image.size())
    return fail("bzImage is truncated: setup is " + std::to_string(setup_bytes) + " bytes, file " +
                std::to_string(image.size()));
  size_t hdr_end = 0x202 + image[kHdrJumpEnd];
  if (hdr_end > setup_bytes || hdr_end < 0x268) return fail("bzImage setup header length is inconsistent");
  img.setup = image.subspan(0, setup_bytes);
  img.kernel = image.subspan(setup_bytes);
  if (img.init_size < img.kernel.size()) img.init_size = static_cast<uint32_t>(img.kernel.size());
  if (img.cmdline_size == 0) img.cmdline_size = 255;
  return img;
}

Result<std::vector<uint8_t>> build_zero_page(const BzImage& img, const ZeroPageParams& p) {
  std::vector<uint8_t> zp(zp::kSize, 0);
  if (img.setup.size() < 0x268 || 0x202u + img.setup[kHdrJumpEnd] > img.setup.size())
    return fail("zero page: the image has no complete setup header");
  // Copy the setup header as the kernel defines it: from 0x1f1 to 0x202 + the jump's length.
  size_t hdr_end = 0x202 + img.setup[kHdrJumpEnd];
  std::memcpy(zp.data() + zp::kSetupHeader, img.setup.data() + zp::kSetupHeader, hdr_end - zp::kSetupHeader);
  if (p.cmdline_len > img.cmdline_size)
    return fail("kernel command line is " + std::to_string(p.cmdline_len) + " bytes; this kernel accepts at most " +
                std::to_string(img.cmdline_size));
  if (p.e820.size() > zp::kE820Max) return fail("too many e820 entries");
  zp[zp::kTypeOfLoader] = 0xff;  // "undefined" loader: we have no assigned id
  zp[zp::kLoadFlags] = static_cast<uint8_t>(img.loadflags | kCanUseHeap);
  put<uint16_t>(zp, zp::kHeapEndPtr, 0xfe00);  // end of setup heap, relative to the real-mode base
  put<uint32_t>(zp, zp::kCmdLinePtr, static_cast<uint32_t>(p.cmdline_gpa));
  if (p.initrd_size) {
    if (p.initrd_gpa + p.initrd_size - 1 > img.initrd_addr_max)
      return fail("initrd does not fit below the kernel's initrd_addr_max");
    put<uint32_t>(zp, zp::kRamdiskImage, static_cast<uint32_t>(p.initrd_gpa));
    put<uint32_t>(zp, zp::kRamdiskSize, static_cast<uint32_t>(p.initrd_size));
  }
  put<uint64_t>(zp, zp::kAcpiRsdpAddr, p.rsdp_gpa);
  zp[zp::kE820Entries] = static_cast<uint8_t>(p.e820.size());
  std::memcpy(zp.data() + zp::kE820Table, p.e820.data(), p.e820.size() * sizeof(E820Entry));
  return zp;
}

}  // namespace iovirt
