// The parts of the vhost-net backend that need no /dev/vhost-net: memory table, ring address
// translation, feature intersection and the error when the module is missing. (The ioctl numbers
// are static_asserted in vhost_net.hpp.)
#include <gtest/gtest.h>

#include <cstring>

#include "iovirt/core/guest_memory.hpp"
#include "iovirt/virtio/net.hpp"
#include "iovirt/virtio/ring.hpp"
#include "iovirt/virtio/vhost_net.hpp"
#include "iovirt/virtio/virtqueue.hpp"

namespace iovirt::virtio::vhost {
namespace {

constexpr uint64_t kMiB = 1ull << 20;

GuestMemory two_regions() {
  const RegionSpec specs[] = {{0, 2 * kMiB}, {4 * kMiB, kMiB}};
  auto m = GuestMemory::create(specs);
  EXPECT_TRUE(m.has_value()) << m.error().message();
  return std::move(*m);
}

TEST(VhostNet, MemTableListsEveryRegionWithItsHostAddress) {
  const GuestMemory mem = two_regions();
  const auto table = build_mem_table(mem);
  ASSERT_EQ(table.size() * 8, sizeof(MemoryHeader) + 2 * sizeof(MemoryRegion));
  MemoryHeader h{};
  std::memcpy(&h, table.data(), sizeof h);
  EXPECT_EQ(h.nregions, 2u);
  EXPECT_EQ(h.padding, 0u);
  for (size_t i = 0; i < 2; ++i) {
    MemoryRegion r{};
    std::memcpy(&r, reinterpret_cast<const uint8_t*>(table.data()) + 8 + i * sizeof r, sizeof r);
    EXPECT_EQ(r.guest_phys_addr, mem.regions()[i].gpa);
    EXPECT_EQ(r.memory_size, mem.regions()[i].size);
    EXPECT_EQ(r.userspace_addr, reinterpret_cast<uint64_t>(mem.regions()[i].host));
    EXPECT_EQ(r.flags_padding, 0u);
  }
}

TEST(VhostNet, RingAddressesTranslateToThisProcess) {
  const GuestMemory mem = two_regions();
  auto q = Virtqueue::create(256);
  ASSERT_TRUE(q.has_value());
  q->set_desc_area(0x1000);
  q->set_driver_area(4 * kMiB + 0x2000);
  q->set_device_area(0x4000);
  auto a = ring_user_addrs(mem, *q);
  ASSERT_TRUE(a.has_value()) << a.error().message();
  EXPECT_EQ(a->desc, reinterpret_cast<uint64_t>(mem.regions()[0].host) + 0x1000);
  EXPECT_EQ(a->avail, reinterpret_cast<uint64_t>(mem.regions()[1].host) + 0x2000);
  EXPECT_EQ(a->used, reinterpret_cast<uint64_t>(mem.regions()[0].host) + 0x4000);
}

TEST(VhostNet, RingAreasOutsideOrAcrossRegionsAreRefused) {
  const GuestMemory mem = two_regions();
  auto q = Virtqueue::create(256);
  ASSERT_TRUE(q.has_value());
  q->set_desc_area(0x1000);
  q->set_driver_area(0x2000);
  q->set_device_area(2 * kMiB - 0x100);  // the used ring (2054 bytes) runs past region 0
  auto a = ring_user_addrs(mem, *q);
  ASSERT_FALSE(a.has_value());
  EXPECT_NE(a.error().message().find("used ring"), std::string::npos) << a.error().message();
  q->set_device_area(0x4000);
  q->set_desc_area(3 * kMiB);  // the hole between the regions
  a = ring_user_addrs(mem, *q);
  ASSERT_FALSE(a.has_value());
  EXPECT_NE(a.error().message().find("descriptor table"), std::string::npos);
  q->set_desc_area(~0ull - 8);  // wraps
  EXPECT_FALSE(ring_user_addrs(mem, *q).has_value());
}

TEST(VhostNet, FeaturesKeepDeviceBitsAndIntersectRingBits) {
  const uint64_t device = feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_F_EVENT_IDX) |
                          feature_bit(VIRTIO_F_RING_PACKED) | feature_bit(net_feature::kMac) |
                          feature_bit(net_feature::kMrgRxbuf) | feature_bit(net_feature::kCtrlVq) |
                          feature_bit(net_feature::kCsum);
  // A kernel with VERSION_1 and EVENT_IDX only (no packed ring, no mergeable buffers).
  const uint64_t kernel =
      feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_F_EVENT_IDX) | feature_bit(27);
  const uint64_t f = intersect_features(device, kernel);
  EXPECT_EQ(f, feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_F_EVENT_IDX) |
                   feature_bit(net_feature::kMac) | feature_bit(net_feature::kCtrlVq) |
                   feature_bit(net_feature::kCsum));
  EXPECT_EQ(f & feature_bit(27), 0u);  // never more than the device offers
}

TEST(VhostNet, PackedRingIsNotOfferedEvenWhenTheKernelHasIt) {
  // setup_ring() programs split rings only, so a kernel offering RING_PACKED/IN_ORDER must not
  // make the guest negotiate them.
  const uint64_t device = feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_F_RING_PACKED) |
                          feature_bit(VIRTIO_F_IN_ORDER);
  const uint64_t f = intersect_features(device, device);
  EXPECT_EQ(f, feature_bit(VIRTIO_F_VERSION_1));
}

TEST(VhostNet, MissingDeviceNamesTheModule) {
  auto fd = open_device("/nonexistent/vhost-net");
  ASSERT_FALSE(fd.has_value());
  EXPECT_NE(fd.error().message().find("modprobe vhost_net"), std::string::npos)
      << fd.error().message();
}

}  // namespace
}  // namespace iovirt::virtio::vhost
