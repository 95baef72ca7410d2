// VfioDeviceTransport over a fake vfio-pci kernel (DeviceFdOps): the GET_REGION_INFO argsz
// two-pass, caching, region I/O (short transfers, EINTR, bounds), mmap offsets and area checks,
// and the exact VFIO_DEVICE_SET_IRQS requests. The real device fd is exercised in the lab.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <vector>

#include "iovirt/vfio/vfio_device.hpp"
#include "iovirt/vfio/vfio_uapi.hpp"

namespace iovirt::vfio {
namespace {

constexpr uint64_t region_offset(uint32_t index) {
  return uint64_t{index} << 40;  // as vfio-pci lays regions out in the device fd
}

// Plays vfio-pci's side of the device fd ioctls, the way linux/vfio.h documents them.
class FakeVfioKernel final : public DeviceFdOps {
 public:
  struct Region {
    uint32_t flags = 0;
    uint64_t size = 0;
    std::vector<uint8_t> caps;  // capability chain, offsets relative to the info struct
    std::vector<uint8_t> data;
  };
  struct IrqSet {
    uint32_t argsz, flags, index, start, count;
    std::vector<int32_t> fds;
  };

  FakeVfioKernel() {
    regions.resize(VFIO_PCI_NUM_REGIONS);
    irqs[VFIO_PCI_INTX_IRQ_INDEX] = {VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE |
                                         VFIO_IRQ_INFO_AUTOMASKED,
                                     1};
    irqs[VFIO_PCI_MSI_IRQ_INDEX] = {VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE, 8};
    irqs[VFIO_PCI_MSIX_IRQ_INDEX] = {VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE, 16};
  }

  int ioctl(unsigned long request, void* arg) override {
    ++ioctls[request];
    if (request == VFIO_DEVICE_GET_INFO) {
      vfio_device_info d{};
      std::memcpy(&d, arg, sizeof d);
      d.flags = VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET;
      d.num_regions = static_cast<uint32_t>(regions.size());
      d.num_irqs = VFIO_PCI_NUM_IRQS;
      std::memcpy(arg, &d, sizeof d);
      return 0;
    }
    if (request == VFIO_DEVICE_GET_REGION_INFO) {
      vfio_region_info r{};
      std::memcpy(&r, arg, sizeof r);
      if (r.argsz < sizeof r || r.index >= regions.size()) return err(EINVAL);
      argsz_seen.push_back(r.argsz);
      const Region& reg = regions[r.index];
      r.flags = reg.flags;
      r.size = reg.size;
      r.offset = region_offset(r.index);
      r.cap_offset = 0;
      if (!reg.caps.empty()) {
        r.flags |= VFIO_REGION_INFO_FLAG_CAPS;
        const uint32_t need = static_cast<uint32_t>(sizeof r + reg.caps.size()) + extra_growth;
        if (r.argsz < need) {
          r.argsz = need;  // "ask again with this much"
        } else {
          std::memcpy(static_cast<uint8_t*>(arg) + sizeof r, reg.caps.data(), reg.caps.size());
          r.cap_offset = sizeof r;
        }
        if (grow_every_time) extra_growth += 64;
      }
      std::memcpy(arg, &r, sizeof r);
      return 0;
    }
    if (request == VFIO_DEVICE_GET_IRQ_INFO) {
      vfio_irq_info i{};
      std::memcpy(&i, arg, sizeof i);
      auto it = irqs.find(i.index);
      i.flags = it == irqs.end() ? 0 : it->second.first;
      i.count = it == irqs.end() ? 0 : it->second.second;
      std::memcpy(arg, &i, sizeof i);
      return 0;
    }
    if (request == VFIO_DEVICE_SET_IRQS) {
      IrqSetHeader h{};
      std::memcpy(&h, arg, sizeof h);
      IrqSet s{h.argsz, h.flags, h.index, h.start, h.count, {}};
      if ((h.flags & VFIO_IRQ_SET_DATA_EVENTFD) != 0) {
        if (h.argsz != sizeof h + h.count * 4U) return err(EINVAL);
        s.fds.resize(h.count);
        std::memcpy(s.fds.data(), static_cast<uint8_t*>(arg) + sizeof h, h.count * 4U);
      }
      irq_sets.push_back(s);
      return 0;
    }
    if (request == VFIO_DEVICE_RESET) return 0;
    return err(ENOTTY);
  }

  ssize_t pread(void* buf, size_t len, off_t offset) override {
    return transfer(buf, len, offset, false);
  }
  ssize_t pwrite(const void* buf, size_t len, off_t offset) override {
    return transfer(const_cast<void*>(buf), len, offset, true);
  }
  void* mmap(size_t len, int prot, off_t offset) override {
    mmaps.push_back({static_cast<uint64_t>(offset), len});
    (void)prot;
    return ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  }
  int fd() const override { return -1; }

  std::vector<Region> regions;
  std::map<uint32_t, std::pair<uint32_t, uint32_t>> irqs;  // index -> (flags, count)
  std::map<unsigned long, int> ioctls;
  std::vector<uint32_t> argsz_seen;
  std::vector<IrqSet> irq_sets;
  std::vector<std::pair<uint64_t, size_t>> mmaps;
  size_t max_chunk = SIZE_MAX;  // short transfers
  int eintr_left = 0;
  uint32_t extra_growth = 0;
  bool grow_every_time = false;

 private:
  static int err(int e) {
    errno = e;
    return -1;
  }
  ssize_t transfer(void* buf, size_t len, off_t offset, bool write) {
    if (eintr_left > 0) {
      --eintr_left;
      errno = EINTR;
      return -1;
    }
    const uint64_t off = static_cast<uint64_t>(offset);
    const uint32_t index = static_cast<uint32_t>(off >> 40);
    if (index >= regions.size()) return err(EINVAL);
    auto& data = regions[index].data;
    const uint64_t in = off & ((1ULL << 40) - 1);
    if (in >= data.size()) return 0;
    const size_t n = std::min({len, max_chunk, static_cast<size_t>(data.size() - in)});
    if (write) {
      std::memcpy(data.data() + in, buf, n);
    } else {
      std::memcpy(buf, data.data() + in, n);
    }
    return static_cast<ssize_t>(n);
  }
};

// A sparse-mmap capability (one area list), next = 0, as bytes placed right after the struct.
void append(std::vector<uint8_t>& out, const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) out.push_back(b[i]);  // no memcpy into data(): g++ 12 -O2 false positive
}

std::vector<uint8_t> sparse_cap(const std::vector<MmapArea>& areas) {
  std::vector<uint8_t> out;
  vfio_region_info_cap_sparse_mmap h{};
  h.header.id = VFIO_REGION_INFO_CAP_SPARSE_MMAP;
  h.header.version = 1;
  h.header.next = 0;
  h.nr_areas = static_cast<uint32_t>(areas.size());
  append(out, &h, sizeof h);
  for (const auto& area : areas) {
    vfio_region_sparse_mmap_area a{area.offset, area.size};
    append(out, &a, sizeof a);
  }
  return out;
}

constexpr uint32_t kRW = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;

struct Fixture {
  FakeVfioKernel* k;
  VfioDeviceTransport t;
  Fixture() : Fixture(std::make_unique<FakeVfioKernel>()) {}
  explicit Fixture(std::unique_ptr<FakeVfioKernel> kernel)
      : k(kernel.get()), t("0000:02:00.0", std::move(kernel)) {
    auto& bar0 = k->regions[0];
    bar0.flags = kRW | VFIO_REGION_INFO_FLAG_MMAP;
    bar0.size = 0x10000;
    bar0.caps = sparse_cap({{0x0, 0x2000}, {0x3000, 0xd000}});
    auto& cfg = k->regions[VFIO_PCI_CONFIG_REGION_INDEX];
    cfg.flags = kRW;
    cfg.size = 256;
    cfg.data.resize(256);
    for (size_t i = 0; i < 256; ++i) cfg.data[i] = static_cast<uint8_t>(i);
    auto& rom = k->regions[VFIO_PCI_ROM_REGION_INDEX];
    rom.flags = VFIO_REGION_INFO_FLAG_READ;
    rom.size = 0x1000;
    rom.data.assign(0x1000, 0xaa);
  }
};

TEST(VfioDevice, RegionInfoAsksTwiceWhenCapabilitiesFollowAndCaches) {
  Fixture f;
  auto r = f.t.region_info(0);
  ASSERT_TRUE(r) << r.error().message();
  ASSERT_EQ(f.k->argsz_seen.size(), 2u);
  EXPECT_EQ(f.k->argsz_seen[0], sizeof(vfio_region_info));
  EXPECT_EQ(f.k->argsz_seen[1], sizeof(vfio_region_info) + f.k->regions[0].caps.size());
  EXPECT_EQ(r->offset, region_offset(0));
  ASSERT_EQ(r->mmap_areas.size(), 2u);
  EXPECT_EQ(r->mmap_areas[1].offset, 0x3000u);

  ASSERT_TRUE(f.t.region_info(0));
  EXPECT_EQ(f.k->argsz_seen.size(), 2u) << "region info is cached";
  EXPECT_EQ(f.k->ioctls[VFIO_DEVICE_GET_INFO], 1);

  auto cfg = f.t.region_info(VFIO_PCI_CONFIG_REGION_INDEX);
  ASSERT_TRUE(cfg);
  EXPECT_EQ(f.k->argsz_seen.size(), 3u) << "no capabilities: one pass";
  EXPECT_FALSE(f.t.region_info(VFIO_PCI_NUM_REGIONS)) << "index past num_regions";
}

TEST(VfioDevice, ArgszThatKeepsGrowingOrIsHugeIsRefused) {
  {
    auto k = std::make_unique<FakeVfioKernel>();
    k->grow_every_time = true;
    Fixture f(std::move(k));
    auto r = f.t.region_info(0);
    ASSERT_FALSE(r);
    EXPECT_EQ(f.k->argsz_seen.size(), 2u) << "never a third pass";
  }
  {
    auto k = std::make_unique<FakeVfioKernel>();
    k->extra_growth = 1 << 20;
    Fixture f(std::move(k));
    auto r = f.t.region_info(0);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message().find("max"), std::string::npos) << r.error().message();
    EXPECT_EQ(f.k->argsz_seen.size(), 1u);
  }
}

TEST(VfioDevice, RegionReadAndWriteLoopOverShortTransfersAndEintr) {
  Fixture f;
  f.k->max_chunk = 3;
  f.k->eintr_left = 2;
  std::vector<uint8_t> buf(16);
  ASSERT_TRUE(f.t.region_read(VFIO_PCI_CONFIG_REGION_INDEX, 0x40, buf));
  for (size_t i = 0; i < buf.size(); ++i) EXPECT_EQ(buf[i], 0x40 + i);

  const std::vector<uint8_t> w = {1, 2, 3, 4, 5, 6, 7};
  f.k->eintr_left = 1;
  ASSERT_TRUE(f.t.region_write(VFIO_PCI_CONFIG_REGION_INDEX, 0x10, w));
  for (size_t i = 0; i < w.size(); ++i) {
    EXPECT_EQ(f.k->regions[VFIO_PCI_CONFIG_REGION_INDEX].data[0x10 + i], w[i]);
  }
}

TEST(VfioDevice, RegionIoOutsideTheRegionOrAgainstItsFlagsIsRefused) {
  Fixture f;
  std::vector<uint8_t> buf(8);
  EXPECT_FALSE(f.t.region_read(VFIO_PCI_CONFIG_REGION_INDEX, 252, buf));
  EXPECT_FALSE(f.t.region_read(VFIO_PCI_CONFIG_REGION_INDEX, UINT64_MAX - 2, buf));
  EXPECT_TRUE(f.t.region_read(VFIO_PCI_CONFIG_REGION_INDEX, 248, buf));
  EXPECT_TRUE(f.t.region_read(VFIO_PCI_ROM_REGION_INDEX, 0, buf));
  auto w = f.t.region_write(VFIO_PCI_ROM_REGION_INDEX, 0, buf);
  ASSERT_FALSE(w);
  EXPECT_NE(w.error().message().find("not writable"), std::string::npos);
  EXPECT_EQ(f.k->regions[VFIO_PCI_ROM_REGION_INDEX].data[0], 0xaa);
}

TEST(VfioDevice, ShortReadAtTheDeviceEndIsAnError) {
  Fixture f;
  f.k->regions[VFIO_PCI_CONFIG_REGION_INDEX].data.resize(100);  // kernel returns 0 past 100
  std::vector<uint8_t> buf(8);
  auto r = f.t.region_read(VFIO_PCI_CONFIG_REGION_INDEX, 96, buf);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("short read"), std::string::npos);
}

TEST(VfioDevice, MapRegionUsesTheFdOffsetAndStaysInsideOneArea) {
  Fixture f;
  auto m = f.t.map_region(0, 0x3000, 0x2000);
  ASSERT_TRUE(m) << m.error().message();
  EXPECT_EQ(m->size(), 0x2000u);
  ASSERT_EQ(f.k->mmaps.size(), 1u);
  EXPECT_EQ(f.k->mmaps[0].first, region_offset(0) + 0x3000);

  EXPECT_FALSE(f.t.map_region(0, 0x1000, 0x2000)) << "crosses the excluded MSI-X table page";
  EXPECT_FALSE(f.t.map_region(0, 0x2000, 0x1000)) << "the excluded page itself";
  EXPECT_FALSE(f.t.map_region(0, 0x3000, 0x10000)) << "past the region";
  EXPECT_FALSE(f.t.map_region(0, 0x800, 0x1000)) << "unaligned";
  EXPECT_FALSE(f.t.map_region(0, 0, 0)) << "empty";
  EXPECT_FALSE(f.t.map_region(VFIO_PCI_CONFIG_REGION_INDEX, 0, 0x1000)) << "not mmap-able";
  EXPECT_EQ(f.k->mmaps.size(), 1u);
}

TEST(VfioDevice, SetIrqsRequestsHaveTheDocumentedLayout) {
  Fixture f;
  const int fds[] = {10, -1, 12};
  ASSERT_TRUE(f.t.set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 2, fds));
  ASSERT_TRUE(f.t.disable_irq(VFIO_PCI_MSIX_IRQ_INDEX));
  ASSERT_TRUE(f.t.set_irq_unmask_eventfd(VFIO_PCI_INTX_IRQ_INDEX, 33));
  ASSERT_TRUE(f.t.set_irq_unmask_eventfd(VFIO_PCI_INTX_IRQ_INDEX, -1));
  ASSERT_EQ(f.k->irq_sets.size(), 4u);

  const auto& t = f.k->irq_sets[0];
  EXPECT_EQ(t.flags, uint32_t{VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER});
  EXPECT_EQ(t.index, uint32_t{VFIO_PCI_MSIX_IRQ_INDEX});
  EXPECT_EQ(t.start, 2u);
  EXPECT_EQ(t.count, 3u);
  EXPECT_EQ(t.argsz, 20u + 12u);
  EXPECT_EQ(t.fds, (std::vector<int32_t>{10, -1, 12}));

  const auto& d = f.k->irq_sets[1];
  EXPECT_EQ(d.flags, uint32_t{VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER});
  EXPECT_EQ(d.count, 0u);
  EXPECT_EQ(d.start, 0u);
  EXPECT_EQ(d.argsz, 20u);

  const auto& u = f.k->irq_sets[2];
  EXPECT_EQ(u.flags, uint32_t{VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK});
  EXPECT_EQ(u.index, uint32_t{VFIO_PCI_INTX_IRQ_INDEX});
  EXPECT_EQ(u.count, 1u);
  EXPECT_EQ(u.fds, (std::vector<int32_t>{33}));
  EXPECT_EQ(f.k->irq_sets[3].fds, (std::vector<int32_t>{-1}));
}

TEST(VfioDevice, SetIrqsOutsideTheDeviceVectorsIsRefusedBeforeTheKernel) {
  Fixture f;
  const int one[] = {5};
  const std::vector<int> seventeen(17, 5);
  EXPECT_FALSE(f.t.set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 16, one));
  EXPECT_FALSE(f.t.set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 0, seventeen));
  EXPECT_FALSE(f.t.set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, UINT32_MAX, one));
  EXPECT_FALSE(f.t.set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 0, {}));
  EXPECT_FALSE(f.t.set_irq_eventfds(VFIO_PCI_ERR_IRQ_INDEX, 0, one)) << "count 0 in the fake";
  EXPECT_FALSE(f.t.set_irq_unmask_eventfd(VFIO_PCI_MSI_IRQ_INDEX, 5)) << "MSI is not maskable";
  EXPECT_FALSE(f.t.set_irq_eventfds(VFIO_PCI_NUM_IRQS, 0, one));
  EXPECT_TRUE(f.k->irq_sets.empty());
}

TEST(VfioDevice, DeviceInfoAndReset) {
  Fixture f;
  auto d = f.t.device_info();
  ASSERT_TRUE(d);
  EXPECT_TRUE(d->resettable());
  EXPECT_EQ(d->num_irqs, uint32_t{VFIO_PCI_NUM_IRQS});
  EXPECT_TRUE(f.t.reset());
  EXPECT_EQ(f.k->ioctls[VFIO_DEVICE_RESET], 1);
  EXPECT_EQ(f.t.name(), "0000:02:00.0");
}

}  // namespace
}  // namespace iovirt::vfio
