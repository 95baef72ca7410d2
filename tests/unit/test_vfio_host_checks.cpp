// vfio/host_checks.hpp: the up-front device/group/node checks on a fake sysfs + /dev tree, and
// the locked-memory check with injected limits.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <limits>
#include <string>

#include "iovirt/vfio/host_checks.hpp"
#include "vfio_fake_sysfs.hpp"

namespace iovirt::vfio {
namespace {

using testing::VfioFakeTree;

PciAddress addr(const char* s) {
  auto a = PciAddress::parse(s);
  EXPECT_TRUE(a);
  return *a;
}

std::string msg(const Result<GroupCheck>& r) {
  return r ? std::string("(ok)") : r.error().message();
}

TEST(VfioHostChecks, ViableDeviceReturnsItsGroup) {
  VfioFakeTree t;
  t.add_device("0000:02:00.0", "vfio-pci", 14);
  t.add_vfio_nodes(14);
  auto r = check_device(Sysfs(t.sys()), addr("0000:02:00.0"), t.dev());
  ASSERT_TRUE(r) << msg(r);
  EXPECT_EQ(r->group, 14u);
  EXPECT_EQ(r->driver, "vfio-pci");
  ASSERT_EQ(r->group_members.size(), 1u);
  EXPECT_EQ(r->group_members[0], "0000:02:00.0");
}

TEST(VfioHostChecks, MissingDeviceNamesTheAddress) {
  VfioFakeTree t;
  auto r = check_device(Sysfs(t.sys()), addr("0000:02:00.0"), t.dev());
  ASSERT_FALSE(r);
  EXPECT_NE(msg(r).find("no PCI device 0000:02:00.0"), std::string::npos) << msg(r);
  EXPECT_NE(msg(r).find("bus/pci/devices"), std::string::npos) << msg(r);
}

TEST(VfioHostChecks, WrongDriverNamesItAndTheFix) {
  VfioFakeTree t;
  t.add_device("0000:02:00.0", "ixgbe", 14);
  t.add_vfio_nodes(14);
  auto r = check_device(Sysfs(t.sys()), addr("0000:02:00.0"), t.dev());
  ASSERT_FALSE(r);
  EXPECT_NE(msg(r).find("bound to ixgbe"), std::string::npos) << msg(r);
  EXPECT_NE(msg(r).find("driver_override"), std::string::npos) << msg(r);
  EXPECT_NE(msg(r).find("drivers_probe"), std::string::npos) << msg(r);
  EXPECT_NE(msg(r).find("0000:02:00.0/driver/unbind"), std::string::npos) << msg(r);
}

TEST(VfioHostChecks, UnboundDeviceIsRefused) {
  VfioFakeTree t;
  t.add_device("0000:02:00.0", std::nullopt, 14);
  t.add_vfio_nodes(14);
  auto r = check_device(Sysfs(t.sys()), addr("0000:02:00.0"), t.dev());
  ASSERT_FALSE(r);
  EXPECT_NE(msg(r).find("not bound to any driver"), std::string::npos) << msg(r);
}

TEST(VfioHostChecks, VfioVariantDriverIsAccepted) {
  VfioFakeTree t;
  t.add_device("0000:02:00.0", "mlx5_vfio_pci", 3);
  t.add_vfio_nodes(3);
  auto r = check_device(Sysfs(t.sys()), addr("0000:02:00.0"), t.dev());
  ASSERT_TRUE(r) << msg(r);
  EXPECT_EQ(r->driver, "mlx5_vfio_pci");
}

TEST(VfioHostChecks, NoIommuGroupSaysEnableTheIommu) {
  VfioFakeTree t;
  t.add_device("0000:02:00.0", "vfio-pci", -1);
  t.add_vfio_nodes(std::nullopt);
  auto r = check_device(Sysfs(t.sys()), addr("0000:02:00.0"), t.dev());
  ASSERT_FALSE(r);
  EXPECT_NE(msg(r).find("no IOMMU group"), std::string::npos) << msg(r);
  EXPECT_NE(msg(r).find("intel_iommu=on"), std::string::npos) << msg(r);
}

TEST(VfioHostChecks, GroupMateOnAHostDriverIsNamed) {
  VfioFakeTree t;
  t.add_device("0000:02:00.0", "vfio-pci", 14);
  t.add_device("0000:02:00.1", "e1000e", 14);
  t.add_vfio_nodes(14);
  auto r = check_device(Sysfs(t.sys()), addr("0000:02:00.0"), t.dev());
  ASSERT_FALSE(r);
  EXPECT_NE(msg(r).find("0000:02:00.1, bound to e1000e"), std::string::npos) << msg(r);
  EXPECT_NE(msg(r).find("e1000e/unbind"), std::string::npos) << msg(r);
}

TEST(VfioHostChecks, GroupMatesThatTheKernelAllowsPass) {
  VfioFakeTree t;
  t.add_device("0000:02:00.0", "vfio-pci", 14);
  t.add_device("0000:02:00.1", "vfio-pci", 14);
  t.add_device("0000:02:00.2", std::nullopt, 14);
  t.add_device("0000:00:1c.0", "pcieport", 14, 0x060400);  // the root port above them
  t.add_device("0000:02:00.3", "pci-stub", 14);
  t.add_vfio_nodes(14);
  auto r = check_device(Sysfs(t.sys()), addr("0000:02:00.0"), t.dev());
  ASSERT_TRUE(r) << msg(r);
  EXPECT_EQ(r->group_members.size(), 5u);
}

TEST(VfioHostChecks, NonBridgeOnPcieportIsNotExcused) {
  VfioFakeTree t;
  t.add_device("0000:02:00.0", "vfio-pci", 14);
  t.add_device("0000:02:00.1", "pcieport", 14, 0x020000);  // claims pcieport but is not a bridge
  t.add_vfio_nodes(14);
  EXPECT_FALSE(check_device(Sysfs(t.sys()), addr("0000:02:00.0"), t.dev()));
}

TEST(VfioHostChecks, MissingVfioNodesSayModprobe) {
  VfioFakeTree t;
  t.add_device("0000:02:00.0", "vfio-pci", 14);
  auto r = check_device(Sysfs(t.sys()), addr("0000:02:00.0"), t.dev());
  ASSERT_FALSE(r);
  EXPECT_NE(msg(r).find("vfio/vfio is missing"), std::string::npos) << msg(r);
  EXPECT_NE(msg(r).find("modprobe vfio-pci"), std::string::npos) << msg(r);

  t.add_vfio_nodes(std::nullopt);  // the container node but not the group's
  r = check_device(Sysfs(t.sys()), addr("0000:02:00.0"), t.dev());
  ASSERT_FALSE(r);
  EXPECT_NE(msg(r).find("vfio/14 is missing"), std::string::npos) << msg(r);
}

TEST(VfioHostChecks, MemlockPassesWithCapabilityOrEnoughLimit) {
  constexpr uint64_t kGiB = 1ULL << 30;
  EXPECT_TRUE(check_memlock(4 * kGiB, MemlockFacts{true, 64 << 20}));
  EXPECT_TRUE(check_memlock(4 * kGiB, MemlockFacts{false, 4 * kGiB}));
  EXPECT_TRUE(check_memlock(4 * kGiB, MemlockFacts{false, std::numeric_limits<uint64_t>::max()}));
}

TEST(VfioHostChecks, MemlockFailureSaysHowMuchAndHowToFix) {
  auto st = check_memlock(2ULL << 30, MemlockFacts{false, 8ULL << 20});
  ASSERT_FALSE(st);
  const std::string m = st.error().message();
  EXPECT_NE(m.find("needs 2048 MiB"), std::string::npos) << m;
  EXPECT_NE(m.find("RLIMIT_MEMLOCK is 8 MiB"), std::string::npos) << m;
  EXPECT_NE(m.find("ulimit -l"), std::string::npos) << m;
  EXPECT_NE(m.find("LimitMEMLOCK"), std::string::npos) << m;
  EXPECT_FALSE(check_memlock((8ULL << 20) + 1, MemlockFacts{false, 8ULL << 20}));
}

TEST(VfioHostChecks, CurrentMemlockFactsAreReadable) {
  auto f = current_memlock_facts();
  ASSERT_TRUE(f) << f.error().message();
  rlimit rl{};
  ASSERT_EQ(::getrlimit(RLIMIT_MEMLOCK, &rl), 0);
  if (rl.rlim_cur == RLIM_INFINITY) {
    EXPECT_EQ(f->limit_bytes, std::numeric_limits<uint64_t>::max());
  } else {
    EXPECT_EQ(f->limit_bytes, rl.rlim_cur);
  }
  if (::geteuid() != 0 && !f->cap_ipc_lock && f->limit_bytes != std::numeric_limits<uint64_t>::max()) {
    EXPECT_FALSE(check_memlock(f->limit_bytes + 1));
  }
}

}  // namespace
}  // namespace iovirt::vfio
