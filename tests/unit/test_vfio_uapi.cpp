// vfio/vfio_uapi.hpp: the parsers of what the kernel returns for VFIO_DEVICE_GET_INFO,
// GET_REGION_INFO (with the capability chain, treated as hostile bytes) and GET_IRQ_INFO.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "iovirt/vfio/vfio_uapi.hpp"

namespace iovirt::vfio {
namespace {

// Builds a GET_REGION_INFO argsz buffer: the struct, then whatever capability bytes a test wants.
class RegionBuf {
 public:
  RegionBuf(uint32_t index, uint32_t flags, uint64_t size, uint64_t offset) {
    bytes_.resize(sizeof(vfio_region_info));
    vfio_region_info r{};
    r.argsz = sizeof r;
    r.flags = flags;
    r.index = index;
    r.size = size;
    r.offset = offset;
    std::memcpy(bytes_.data(), &r, sizeof r);
  }
  // Appends a capability header at the end, returns its offset.
  size_t add_cap(uint16_t id, uint32_t next) {
    size_t off = bytes_.size();
    vfio_info_cap_header h{};
    h.id = id;
    h.version = 1;
    h.next = next;
    append(&h, sizeof h);
    return off;
  }
  size_t add_sparse(const std::vector<MmapArea>& areas, uint32_t next = 0, uint32_t nr = UINT32_MAX) {
    size_t off = add_cap(VFIO_REGION_INFO_CAP_SPARSE_MMAP, next);
    uint32_t n = nr == UINT32_MAX ? static_cast<uint32_t>(areas.size()) : nr;
    uint32_t reserved = 0;
    append(&n, 4);
    append(&reserved, 4);
    for (const auto& a : areas) {
      vfio_region_sparse_mmap_area x{a.offset, a.size};
      append(&x, sizeof x);
    }
    return off;
  }
  // Sets the chain fields of the struct: FLAG_CAPS, cap_offset, argsz (default: buffer size).
  void set_caps(uint32_t cap_offset, uint32_t argsz = 0) {
    vfio_region_info r{};
    std::memcpy(&r, bytes_.data(), sizeof r);
    r.flags |= VFIO_REGION_INFO_FLAG_CAPS;
    r.cap_offset = cap_offset;
    r.argsz = argsz != 0 ? argsz : static_cast<uint32_t>(bytes_.size());
    std::memcpy(bytes_.data(), &r, sizeof r);
  }
  void patch_next(size_t cap_off, uint32_t next) {
    std::memcpy(bytes_.data() + cap_off + 4, &next, 4);
  }
  std::span<const uint8_t> span() const { return bytes_; }

 private:
  void append(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) bytes_.push_back(b[i]);
  }
  std::vector<uint8_t> bytes_;
};

// The refusal and its reason: each hostile case must be caught by its own check, not by a later
// bound that happens to stop it too.
::testing::AssertionResult refused_for(const Result<RegionInfo>& r, const std::string& why) {
  if (r) return ::testing::AssertionFailure() << "accepted";
  if (r.error().message().find(why) == std::string::npos) {
    return ::testing::AssertionFailure() << "refused for another reason: " << r.error().message();
  }
  return ::testing::AssertionSuccess();
}

constexpr uint32_t kRW = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
constexpr uint32_t kRWM = kRW | VFIO_REGION_INFO_FLAG_MMAP;
constexpr uint64_t kBar0Off = 0ULL << 40;  // vfio-pci puts region i at i << 40

TEST(VfioUapi, PlainMappableBarIsOneWholeArea) {
  RegionBuf b(0, kRWM, 0x10000, kBar0Off);
  auto r = parse_region_info(b.span(), 0);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->size, 0x10000u);
  EXPECT_TRUE(r->readable());
  EXPECT_TRUE(r->writable());
  ASSERT_TRUE(r->mappable());
  ASSERT_EQ(r->mmap_areas.size(), 1u);
  EXPECT_EQ(r->mmap_areas[0].offset, 0u);
  EXPECT_EQ(r->mmap_areas[0].size, 0x10000u);
}

TEST(VfioUapi, NonMmapRegionAndSubPageBarHaveNoAreas) {
  RegionBuf cfg(VFIO_PCI_CONFIG_REGION_INDEX, kRW, 4096, 7ULL << 40);
  auto r = parse_region_info(cfg.span(), VFIO_PCI_CONFIG_REGION_INDEX);
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->mappable());
  EXPECT_TRUE(r->mmap_areas.empty());

  RegionBuf small(2, kRWM, 256, 2ULL << 40);
  auto s = parse_region_info(small.span(), 2);
  ASSERT_TRUE(s);
  EXPECT_FALSE(s->mappable()) << "a page mmap of a 256-byte BAR would expose more than the BAR";
}

TEST(VfioUapi, SparseMmapCapabilityGivesTheAreasAroundTheMsixTable) {
  RegionBuf b(0, kRWM, 0x10000, kBar0Off);
  // An unknown capability (REGION_TYPE) first, then the sparse one: table page 0x2000 excluded.
  size_t type_cap = b.add_cap(VFIO_REGION_INFO_CAP_TYPE, 0);
  b.add_cap(0, 0);  // stands in for REGION_TYPE's 8-byte body (type, subtype): never read
  size_t sparse_off = b.add_sparse({{0x0, 0x2000}, {0x3000, 0xd000}});
  b.patch_next(type_cap, static_cast<uint32_t>(sparse_off));
  b.set_caps(static_cast<uint32_t>(type_cap));
  auto r = parse_region_info(b.span(), 0);
  ASSERT_TRUE(r) << r.error().message();
  ASSERT_EQ(r->mmap_areas.size(), 2u);
  EXPECT_EQ(r->mmap_areas[0].offset, 0u);
  EXPECT_EQ(r->mmap_areas[0].size, 0x2000u);
  EXPECT_EQ(r->mmap_areas[1].offset, 0x3000u);
  EXPECT_EQ(r->mmap_areas[1].size, 0xd000u);
}

TEST(VfioUapi, SparseWithZeroAreasMeansNothingMappable) {
  RegionBuf b(0, kRWM, 0x10000, kBar0Off);
  size_t off = b.add_sparse({});
  b.set_caps(static_cast<uint32_t>(off));
  auto r = parse_region_info(b.span(), 0);
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->mappable());
}

TEST(VfioUapi, SparseIgnoredWhenMmapFlagClear) {
  RegionBuf b(0, kRW, 0x10000, kBar0Off);
  size_t off = b.add_sparse({{0, 0x1000}});
  b.set_caps(static_cast<uint32_t>(off));
  auto r = parse_region_info(b.span(), 0);
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->mmap_areas.empty());
}

TEST(VfioUapi, RejectsWrongIndexShortBufferAndOffsetOverflow) {
  RegionBuf b(1, kRWM, 0x1000, 1ULL << 40);
  EXPECT_FALSE(parse_region_info(b.span(), 0));
  EXPECT_FALSE(parse_region_info(b.span().first(31), 1));
  RegionBuf wrap(1, kRWM, 0x2000, UINT64_MAX - 0xfff);
  EXPECT_FALSE(parse_region_info(wrap.span(), 1));
  RegionBuf past_off_t(1, kRWM, 0x1000, static_cast<uint64_t>(INT64_MAX));
  EXPECT_FALSE(parse_region_info(past_off_t.span(), 1)) << "mmap/pread offsets are signed off_t";
}

TEST(VfioUapi, CapsThatDidNotFitMustBeAskedForAgain) {
  RegionBuf b(0, kRWM, 0x10000, kBar0Off);
  b.set_caps(0, 80);  // the kernel's answer to a 32-byte argsz: needs 80, cap_offset 0
  auto r = parse_region_info(b.span(), 0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), EMSGSIZE);
}

TEST(VfioUapi, CapsFlagWithoutOffsetIsRefused) {
  RegionBuf b(0, kRWM, 0x10000, kBar0Off);
  b.add_sparse({{0, 0x1000}});
  b.set_caps(0);
  EXPECT_FALSE(parse_region_info(b.span(), 0));
}

TEST(VfioUapi, HostileCapabilityChainsAreRefused) {
  {  // cap offset inside the fixed struct
    RegionBuf b(0, kRWM, 0x10000, kBar0Off);
    b.add_sparse({{0, 0x1000}});
    b.set_caps(8);
    EXPECT_TRUE(refused_for(parse_region_info(b.span(), 0), "lies outside"));
  }
  {  // cap offset past the end
    RegionBuf b(0, kRWM, 0x10000, kBar0Off);
    b.add_sparse({{0, 0x1000}});
    b.set_caps(4096);
    EXPECT_TRUE(refused_for(parse_region_info(b.span(), 0), "lies outside"));
  }
  {  // a cycle: the capability points at itself
    RegionBuf b(0, kRWM, 0x10000, kBar0Off);
    size_t off = b.add_cap(VFIO_REGION_INFO_CAP_TYPE, 0);
    b.patch_next(off, static_cast<uint32_t>(off));
    b.set_caps(static_cast<uint32_t>(off));
    EXPECT_TRUE(refused_for(parse_region_info(b.span(), 0), "lies outside"));
  }
  {  // a backwards link to an earlier capability
    RegionBuf b(0, kRWM, 0x10000, kBar0Off);
    size_t a = b.add_cap(VFIO_REGION_INFO_CAP_TYPE, 0);
    size_t c = b.add_cap(VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, static_cast<uint32_t>(a));
    b.patch_next(a, static_cast<uint32_t>(c));
    b.set_caps(static_cast<uint32_t>(a));
    EXPECT_TRUE(refused_for(parse_region_info(b.span(), 0), "lies outside"));
  }
  {  // header straddling the end of the buffer
    RegionBuf b(0, kRWM, 0x10000, kBar0Off);
    size_t off = b.add_cap(VFIO_REGION_INFO_CAP_TYPE, 0);
    b.set_caps(static_cast<uint32_t>(off), static_cast<uint32_t>(off + 4));
    EXPECT_TRUE(refused_for(parse_region_info(b.span().first(off + 4), 0), "lies outside"));
  }
  {  // nr_areas claims more areas than the buffer holds
    RegionBuf b(0, kRWM, 0x10000, kBar0Off);
    size_t off = b.add_sparse({{0, 0x1000}}, 0, 3);
    b.set_caps(static_cast<uint32_t>(off));
    EXPECT_TRUE(refused_for(parse_region_info(b.span(), 0), "run past"));
  }
  {  // nr_areas above the bound, even if the bytes were there
    RegionBuf b(0, kRWM, 0x10000, kBar0Off);
    std::vector<MmapArea> many(kMaxSparseAreas + 1, MmapArea{0, 0x1000});
    size_t off = b.add_sparse(many);
    b.set_caps(static_cast<uint32_t>(off));
    EXPECT_TRUE(refused_for(parse_region_info(b.span(), 0), "sparse-mmap areas (max"));
  }
  {  // two sparse capabilities
    RegionBuf b(0, kRWM, 0x10000, kBar0Off);
    size_t a = b.add_sparse({{0, 0x1000}});
    size_t c = b.add_sparse({{0x1000, 0x1000}});
    b.patch_next(a, static_cast<uint32_t>(c));
    b.set_caps(static_cast<uint32_t>(a));
    EXPECT_TRUE(refused_for(parse_region_info(b.span(), 0), "two sparse-mmap"));
  }
}

TEST(VfioUapi, ChainLongerThanTheBoundIsRefused) {
  RegionBuf b(0, kRWM, 0x10000, kBar0Off);
  std::vector<size_t> caps;
  for (unsigned i = 0; i <= kMaxCapabilities; ++i) caps.push_back(b.add_cap(100, 0));
  for (size_t i = 0; i + 1 < caps.size(); ++i) {
    b.patch_next(caps[i], static_cast<uint32_t>(caps[i + 1]));
  }
  b.set_caps(static_cast<uint32_t>(caps[0]));
  EXPECT_TRUE(refused_for(parse_region_info(b.span(), 0), "more than 16 capabilities"));
}

TEST(VfioUapi, SparseAreasMustBeAlignedAndInsideTheRegion) {
  const std::vector<std::vector<MmapArea>> bad = {
      {{0x100, 0x1000}},             // unaligned offset
      {{0x0, 0x1800}},               // unaligned size
      {{0xf000, 0x2000}},            // runs past the 64 KiB region
      {{0x11000, 0x1000}},           // starts past it
      {{0x1000, UINT64_MAX & ~0xfffULL}},  // size wraps offset + size
  };
  for (const auto& areas : bad) {
    RegionBuf b(0, kRWM, 0x10000, kBar0Off);
    size_t off = b.add_sparse(areas);
    b.set_caps(static_cast<uint32_t>(off));
    EXPECT_FALSE(parse_region_info(b.span(), 0)) << areas[0].offset << "+" << areas[0].size;
  }
}

TEST(VfioUapi, DeviceInfoMustBePciWithBoundedCounts) {
  vfio_device_info d{};
  d.argsz = sizeof d;
  d.flags = VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET;
  d.num_regions = VFIO_PCI_NUM_REGIONS;
  d.num_irqs = VFIO_PCI_NUM_IRQS;
  auto ok = parse_device_info(d);
  ASSERT_TRUE(ok);
  EXPECT_TRUE(ok->resettable());
  EXPECT_EQ(ok->num_regions, static_cast<uint32_t>(VFIO_PCI_NUM_REGIONS));

  auto platform = d;
  platform.flags = VFIO_DEVICE_FLAGS_PLATFORM;
  EXPECT_FALSE(parse_device_info(platform));
  auto few = d;
  few.num_regions = VFIO_PCI_CONFIG_REGION_INDEX;  // no config space region
  EXPECT_FALSE(parse_device_info(few));
  auto many = d;
  many.num_regions = kMaxRegions + 1;
  EXPECT_FALSE(parse_device_info(many));
  auto irqs = d;
  irqs.num_irqs = UINT32_MAX;
  EXPECT_FALSE(parse_device_info(irqs));
}

TEST(VfioUapi, IrqInfoCountsAreBoundedPerIndex) {
  auto info = [](uint32_t index, uint32_t count) {
    vfio_irq_info i{};
    i.argsz = sizeof i;
    i.flags = VFIO_IRQ_INFO_EVENTFD;
    i.index = index;
    i.count = count;
    return i;
  };
  EXPECT_TRUE(parse_irq_info(info(VFIO_PCI_INTX_IRQ_INDEX, 1), VFIO_PCI_INTX_IRQ_INDEX));
  EXPECT_FALSE(parse_irq_info(info(VFIO_PCI_INTX_IRQ_INDEX, 2), VFIO_PCI_INTX_IRQ_INDEX));
  EXPECT_TRUE(parse_irq_info(info(VFIO_PCI_MSI_IRQ_INDEX, 32), VFIO_PCI_MSI_IRQ_INDEX));
  EXPECT_FALSE(parse_irq_info(info(VFIO_PCI_MSI_IRQ_INDEX, 33), VFIO_PCI_MSI_IRQ_INDEX));
  auto msix = parse_irq_info(info(VFIO_PCI_MSIX_IRQ_INDEX, 2048), VFIO_PCI_MSIX_IRQ_INDEX);
  ASSERT_TRUE(msix);
  EXPECT_EQ(msix->count, 2048u);
  EXPECT_FALSE(parse_irq_info(info(VFIO_PCI_MSIX_IRQ_INDEX, 2049), VFIO_PCI_MSIX_IRQ_INDEX));
  EXPECT_FALSE(parse_irq_info(info(VFIO_PCI_MSI_IRQ_INDEX, 1), VFIO_PCI_MSIX_IRQ_INDEX));
}

}  // namespace
}  // namespace iovirt::vfio
