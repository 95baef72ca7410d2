#include "iovirt/vfio/vfio_uapi.hpp"

#include <cstring>
#include <limits>
#include <string>

namespace iovirt::vfio {

namespace {

template <class T>
T load(std::span<const uint8_t> buf, size_t off) {
  T v;
  std::memcpy(&v, buf.data() + off, sizeof(T));
  return v;
}

std::string region_name(uint32_t index) {
  std::string s = "region ";
  s += std::to_string(index);
  return s;
}

}  // namespace

Result<DeviceInfo> parse_device_info(const vfio_device_info& raw) {
  if ((raw.flags & VFIO_DEVICE_FLAGS_PCI) == 0) {
    return fail("VFIO device is not a vfio-pci device (flags 0x" + std::to_string(raw.flags) +
                    "): only PCI passthrough is supported",
                EINVAL);
  }
  if (raw.num_regions <= VFIO_PCI_CONFIG_REGION_INDEX || raw.num_regions > kMaxRegions) {
    return fail("VFIO device reports " + std::to_string(raw.num_regions) +
                    " regions: expected the vfio-pci fixed regions and at most " +
                    std::to_string(kMaxRegions),
                EINVAL);
  }
  if (raw.num_irqs <= VFIO_PCI_MSIX_IRQ_INDEX || raw.num_irqs > kMaxIrqIndexes) {
    return fail("VFIO device reports " + std::to_string(raw.num_irqs) +
                    " IRQ indexes: expected the vfio-pci INTx/MSI/MSI-X indexes and at most " +
                    std::to_string(kMaxIrqIndexes),
                EINVAL);
  }
  return DeviceInfo{raw.flags, raw.num_regions, raw.num_irqs};
}

Result<RegionInfo> parse_region_info(std::span<const uint8_t> buf, uint32_t expected_index) {
  constexpr size_t kHdr = sizeof(vfio_region_info);
  if (buf.size() < kHdr) {
    return fail("VFIO region info: " + std::to_string(buf.size()) + " bytes, need " +
                    std::to_string(kHdr),
                EINVAL);
  }
  const auto raw = load<vfio_region_info>(buf, 0);
  const std::string what = "VFIO " + region_name(expected_index) + " info";
  if (raw.index != expected_index) {
    return fail(what + ": kernel answered for index " + std::to_string(raw.index), EINVAL);
  }
  if (raw.size > std::numeric_limits<uint64_t>::max() - raw.offset ||
      raw.offset + raw.size > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return fail(what + ": offset " + std::to_string(raw.offset) + " + size " +
                    std::to_string(raw.size) + " overflows the device fd offset range",
                EINVAL);
  }

  RegionInfo info;
  info.index = raw.index;
  info.flags = raw.flags;
  info.size = raw.size;
  info.offset = raw.offset;

  bool have_sparse = false;
  std::vector<MmapArea> sparse;
  if ((raw.flags & VFIO_REGION_INFO_FLAG_CAPS) != 0) {
    if (raw.argsz > buf.size()) {
      return fail(what + ": capabilities need " + std::to_string(raw.argsz) +
                      " bytes, the buffer has " + std::to_string(buf.size()),
                  EMSGSIZE);
    }
    if (raw.cap_offset == 0) {
      return fail(what + ": CAPS flag set but no capability offset", EINVAL);
    }
    const auto chain = buf.first(raw.argsz < kHdr ? kHdr : raw.argsz);
    size_t off = raw.cap_offset;
    size_t min_next = kHdr;  // each capability starts after the struct and after the previous one
    unsigned n = 0;
    while (off != 0) {
      if (++n > kMaxCapabilities) {
        return fail(what + ": more than " + std::to_string(kMaxCapabilities) + " capabilities",
                    EINVAL);
      }
      if (off < min_next || off > chain.size() || chain.size() - off < sizeof(vfio_info_cap_header)) {
        return fail(what + ": capability at offset " + std::to_string(off) +
                        " lies outside the " + std::to_string(chain.size()) + "-byte buffer",
                    EINVAL);
      }
      const auto cap = load<vfio_info_cap_header>(chain, off);
      if (cap.id == VFIO_REGION_INFO_CAP_SPARSE_MMAP) {
        if (have_sparse) return fail(what + ": two sparse-mmap capabilities", EINVAL);
        have_sparse = true;
        constexpr size_t kSparseHdr = sizeof(vfio_region_info_cap_sparse_mmap);
        if (chain.size() - off < kSparseHdr) {
          return fail(what + ": sparse-mmap capability truncated", EINVAL);
        }
        const auto sp = load<vfio_region_info_cap_sparse_mmap>(chain, off);
        if (sp.nr_areas > kMaxSparseAreas) {
          return fail(what + ": " + std::to_string(sp.nr_areas) + " sparse-mmap areas (max " +
                          std::to_string(kMaxSparseAreas) + ")",
                      EINVAL);
        }
        const size_t areas_bytes = size_t{sp.nr_areas} * sizeof(vfio_region_sparse_mmap_area);
        if (chain.size() - off - kSparseHdr < areas_bytes) {
          return fail(what + ": " + std::to_string(sp.nr_areas) +
                          " sparse-mmap areas run past the buffer",
                      EINVAL);
        }
        sparse.reserve(sp.nr_areas);
        for (uint32_t i = 0; i < sp.nr_areas; ++i) {
          const auto a = load<vfio_region_sparse_mmap_area>(
              chain, off + kSparseHdr + size_t{i} * sizeof(vfio_region_sparse_mmap_area));
          if (a.size == 0) continue;  // an empty window maps nothing
          if (a.offset % kHostPageSize != 0 || a.size % kHostPageSize != 0 ||
              a.offset > raw.size || a.size > raw.size - a.offset) {
            return fail(what + ": sparse-mmap area " + std::to_string(i) + " [" +
                            std::to_string(a.offset) + ", +" + std::to_string(a.size) +
                            ") is unaligned or outside the " + std::to_string(raw.size) +
                            "-byte region",
                        EINVAL);
          }
          sparse.push_back(MmapArea{a.offset, a.size});
        }
      }
      if (cap.next != 0) min_next = off + sizeof(vfio_info_cap_header);
      off = cap.next;
    }
  }

  if ((raw.flags & VFIO_REGION_INFO_FLAG_MMAP) != 0 && raw.size != 0) {
    if (have_sparse) {
      info.mmap_areas = std::move(sparse);
    } else if (raw.size % kHostPageSize == 0) {
      info.mmap_areas.push_back(MmapArea{0, raw.size});
    }
    // A whole-region mapping of a sub-page region (a 256-byte BAR) is not offered: a page-sized
    // mmap would expose bytes beyond the BAR. Such regions go through pread/pwrite.
  }
  return info;
}

Result<IrqInfo> parse_irq_info(const vfio_irq_info& raw, uint32_t expected_index) {
  const std::string what = "VFIO IRQ index " + std::to_string(expected_index) + " info";
  if (raw.index != expected_index) {
    return fail(what + ": kernel answered for index " + std::to_string(raw.index), EINVAL);
  }
  uint32_t max = kMaxMsixVectors;
  if (expected_index == VFIO_PCI_INTX_IRQ_INDEX) max = 1;
  if (expected_index == VFIO_PCI_MSI_IRQ_INDEX) max = kMaxMsiVectors;
  if (raw.count > max) {
    return fail(what + ": " + std::to_string(raw.count) + " vectors (max " + std::to_string(max) +
                    ")",
                EINVAL);
  }
  return IrqInfo{raw.index, raw.flags, raw.count};
}

}  // namespace iovirt::vfio
