// vfio/container.hpp: map_guest_memory / DmaMappings over a recording Container (the real type1
// ioctls need /dev/vfio and run in the lab), and Type1Container's refusal without VFIO nodes.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "iovirt/vfio/container.hpp"

namespace iovirt::vfio {
namespace {

class RecordingContainer final : public Container {
 public:
  struct Call {
    bool map;
    uint64_t iova;
    uint64_t size;
    void* host;
  };
  std::string_view kind() const override { return "recording"; }
  Status map_dma(uint64_t iova, uint64_t size, void* host) override {
    if (fail_map_at == calls.size()) return fail("injected map failure", EIO);
    calls.push_back({true, iova, size, host});
    return {};
  }
  Status unmap_dma(uint64_t iova, uint64_t size) override {
    calls.push_back({false, iova, size, nullptr});
    return {};
  }
  Result<OpenedDevice> open_device(const PciAddress&, uint32_t) override {
    return fail("not a real container", ENOTSUP);
  }
  std::vector<Call> calls;
  size_t fail_map_at = SIZE_MAX;
};

GuestMemory two_regions() {
  const RegionSpec specs[] = {{0, 1 << 20}, {0x100000000ULL, 2 << 20}};
  auto m = GuestMemory::create(specs);
  EXPECT_TRUE(m);
  return std::move(*m);
}

TEST(VfioContainer, MapsEveryRegionAtItsGpaAndUnmapsInReverseOnDestruction) {
  auto mem = two_regions();
  RecordingContainer c;
  {
    auto maps = map_guest_memory(c, mem);
    ASSERT_TRUE(maps) << maps.error().message();
    ASSERT_EQ(c.calls.size(), 2u);
    for (size_t i = 0; i < 2; ++i) {
      EXPECT_TRUE(c.calls[i].map);
      EXPECT_EQ(c.calls[i].iova, mem.regions()[i].gpa);
      EXPECT_EQ(c.calls[i].size, mem.regions()[i].size);
      EXPECT_EQ(c.calls[i].host, mem.regions()[i].host);
    }
    EXPECT_EQ(maps->ranges().size(), 2u);
    DmaMappings moved = std::move(*maps);  // ownership moves; the moved-from unmaps nothing
    EXPECT_EQ(c.calls.size(), 2u);
  }
  ASSERT_EQ(c.calls.size(), 4u);
  EXPECT_FALSE(c.calls[2].map);
  EXPECT_EQ(c.calls[2].iova, 0x100000000ULL);
  EXPECT_FALSE(c.calls[3].map);
  EXPECT_EQ(c.calls[3].iova, 0u);
}

TEST(VfioContainer, FailedMapUndoesWhatWasMapped) {
  auto mem = two_regions();
  RecordingContainer c;
  c.fail_map_at = 1;
  auto maps = map_guest_memory(c, mem);
  ASSERT_FALSE(maps);
  EXPECT_NE(maps.error().message().find("DMA-map guest RAM"), std::string::npos);
  ASSERT_EQ(c.calls.size(), 2u);
  EXPECT_TRUE(c.calls[0].map);
  EXPECT_FALSE(c.calls[1].map);
  EXPECT_EQ(c.calls[1].iova, 0u);
}

TEST(VfioContainer, ReleaseUnmapsOnceOnly) {
  auto mem = two_regions();
  RecordingContainer c;
  auto maps = map_guest_memory(c, mem);
  ASSERT_TRUE(maps);
  EXPECT_TRUE(maps->release());
  EXPECT_TRUE(maps->ranges().empty());
  EXPECT_TRUE(maps->release());
  EXPECT_EQ(c.calls.size(), 4u);
}

TEST(VfioContainer, Type1OpenWithoutVfioNodesSaysModprobe) {
  auto dir = std::filesystem::temp_directory_path() / "iovirt-vfio-nodev";
  std::filesystem::create_directories(dir);
  auto c = Type1Container::open(dir);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code(), ENOENT);
  EXPECT_NE(c.error().message().find("modprobe vfio-pci"), std::string::npos)
      << c.error().message();
  EXPECT_FALSE(iommufd_available(dir));
  auto any = open_container(dir);
  EXPECT_FALSE(any);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace iovirt::vfio
