// sriov/ on a fake sysfs tree (tests/unit/sriov_fake_sysfs.hpp): discovery, enable/disable,
// driver binding, the VF lease pool across processes, and bad inputs.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>

#include "iovirt/sriov/pool.hpp"
#include "iovirt/sriov/sriov.hpp"
#include "iovirt/core/sysfs.hpp"
#include "sriov_fake_sysfs.hpp"

namespace iovirt::sriov {
namespace {

using testing::FakeSysfs;
using namespace std::chrono_literals;

constexpr const char* kNvmePf = "0000:01:00.0";
constexpr const char* kNvmeVf1 = "0000:01:00.1";
constexpr const char* kNvmeVf2 = "0000:01:00.2";
constexpr const char* kNicPf = "0000:03:00.0";
constexpr const char* kEdu = "0000:02:00.0";

PciAddress addr(const char* s) {
  auto a = PciAddress::parse(s);
  EXPECT_TRUE(a.has_value()) << s;
  return a.value_or(PciAddress{});
}

// The lab's shape: an NVMe PF (2 VFs, VF driver nvme), a NIC PF with a netdev, an edu device
// without SR-IOV, drivers nvme, igbvf, igb, edu and (unless told otherwise) vfio-pci.
struct Fixture {
  explicit Fixture(bool with_vfio = true, bool autoprobe = true) {
    fake.add_driver("nvme");
    fake.add_driver("igb");
    fake.add_driver("igbvf");
    if (with_vfio) fake.add_driver("vfio-pci");
    fake.add_pf({.addr = kNvmePf, .vendor = 0x1b36, .device = 0x0010, .vf_device = 0x0010,
                 .driver = "nvme", .vf_driver = "nvme", .total_vfs = 2, .autoprobe = autoprobe,
                 .netdevs = {}});
    fake.add_pf({.addr = kNicPf, .vendor = 0x8086, .device = 0x10c9, .vf_device = 0x10ca,
                 .driver = "igb", .vf_driver = "igbvf", .total_vfs = 7, .autoprobe = autoprobe,
                 .netdevs = {"enp3s0f0"}});
    fake.add_device(kEdu, 0x1234, 0x11e8);
    Options o;
    o.timeout = 1500ms;
    o.poll_interval = 1ms;
    o.settle = [this] { fake.settle(); };
    sriov.emplace(Sysfs(fake.root()), o);
  }
  FakeSysfs fake;
  std::optional<Sriov> sriov;
};

TEST(SriovAddress, ParsesStrictlyAndPrints) {
  auto a = PciAddress::parse("0000:01:00.1");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->bus, 1);
  EXPECT_EQ(a->function, 1);
  EXPECT_EQ(a->to_string(), "0000:01:00.1");
  auto b = PciAddress::parse("ABCD:ef:1f.7");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->to_string(), "abcd:ef:1f.7");
  for (const char* bad : {"", "01:00.1", "0000:01:00.8", "0000:01:20.0", "0000:01:00.1 ",
                          "0000-01:00.1", "0000:1:00.1", "g000:01:00.1", "0000:01:00.10"}) {
    auto r = PciAddress::parse(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_NE(r.error().what().find("expected DDDD:BB:DD.F"), std::string::npos);
  }
}

TEST(SriovDiscovery, FindsPfsVfsDriversGroupsAndNetdevs) {
  Fixture f;
  f.fake.set_numvfs(kNicPf, 2);
  auto pfs = f.sriov->discover_pfs();
  ASSERT_TRUE(pfs) << pfs.error().message();
  ASSERT_EQ(pfs->size(), 2u);  // edu has no SR-IOV
  const PfInfo& nvme = (*pfs)[0];
  EXPECT_EQ(nvme.address.to_string(), kNvmePf);
  EXPECT_EQ(nvme.vendor, 0x1b36);
  EXPECT_EQ(nvme.device, 0x0010);
  EXPECT_EQ(nvme.driver, "nvme");
  EXPECT_TRUE(nvme.netdevs.empty());
  EXPECT_EQ(nvme.total_vfs, 2u);
  EXPECT_EQ(nvme.num_vfs, 0u);
  EXPECT_TRUE(nvme.vfs.empty());
  const PfInfo& nic = (*pfs)[1];
  EXPECT_EQ(nic.address.to_string(), kNicPf);
  EXPECT_EQ(nic.driver, "igb");
  EXPECT_EQ(nic.netdevs, std::vector<std::string>{"enp3s0f0"});
  EXPECT_EQ(nic.total_vfs, 7u);
  EXPECT_EQ(nic.num_vfs, 2u);
  EXPECT_TRUE(nic.drivers_autoprobe);
  ASSERT_EQ(nic.vfs.size(), 2u);
  EXPECT_EQ(nic.vfs[0].index, 0u);
  EXPECT_EQ(nic.vfs[0].address.to_string(), "0000:03:00.1");
  EXPECT_EQ(nic.vfs[1].address.to_string(), "0000:03:00.2");
  EXPECT_EQ(nic.vfs[0].driver, "igbvf");  // autoprobe bound the VF driver, not the PF's
  ASSERT_TRUE(nic.vfs[0].iommu_group && nic.vfs[1].iommu_group);
  EXPECT_NE(*nic.vfs[0].iommu_group, *nic.vfs[1].iommu_group);

  PciAddress pf_of{};
  auto v = f.sriov->vf(addr("0000:03:00.2"), &pf_of);
  ASSERT_TRUE(v) << v.error().message();
  EXPECT_EQ(v->index, 1u);
  EXPECT_EQ(pf_of.to_string(), kNicPf);
}

TEST(SriovDiscovery, BadPfsGiveOneLineErrorsNamingTheFix) {
  Fixture f;
  f.fake.set_numvfs(kNvmePf, 1);
  auto unknown = f.sriov->pf(addr("0000:09:00.0"));
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().what().find("no PCI device 0000:09:00.0"), std::string::npos);
  EXPECT_NE(unknown.error().what().find("lspci -D"), std::string::npos);
  auto edu = f.sriov->pf(addr(kEdu));
  ASSERT_FALSE(edu);
  EXPECT_NE(edu.error().what().find("not SR-IOV capable"), std::string::npos);
  auto vf_as_pf = f.sriov->pf(addr(kNvmeVf1));
  ASSERT_FALSE(vf_as_pf);
  EXPECT_NE(vf_as_pf.error().what().find("it is a VF of PF 0000:01:00.0"), std::string::npos);
  auto pf_as_vf = f.sriov->vf(addr(kNvmePf));
  ASSERT_FALSE(pf_as_vf);
  EXPECT_NE(pf_as_vf.error().what().find("not an SR-IOV VF"), std::string::npos);
  for (const auto* e : {&unknown.error(), &edu.error(), &vf_as_pf.error()}) {
    EXPECT_EQ(e->message().find('\n'), std::string::npos);
  }
}

TEST(SriovEnable, EnablesDisablesAndGoesThroughZero) {
  Fixture f(/*with_vfio=*/true, /*autoprobe=*/false);
  ASSERT_TRUE(f.sriov->enable(addr(kNvmePf), 2));
  auto pf = f.sriov->pf(addr(kNvmePf));
  ASSERT_TRUE(pf);
  EXPECT_EQ(pf->num_vfs, 2u);
  ASSERT_EQ(pf->vfs.size(), 2u);
  EXPECT_FALSE(pf->drivers_autoprobe);
  EXPECT_FALSE(pf->vfs[0].driver);  // autoprobe off: VFs come up unbound
  EXPECT_EQ(f.fake.attr(kNvmePf, "sriov_numvfs"), "2");

  // 2 -> 1 must pass through 0; the fake counts a violation if written directly.
  ASSERT_TRUE(f.sriov->enable(addr(kNvmePf), 1));
  pf = f.sriov->pf(addr(kNvmePf));
  ASSERT_TRUE(pf);
  EXPECT_EQ(pf->vfs.size(), 1u);
  EXPECT_EQ(f.fake.violations(), 0);
  EXPECT_FALSE(f.fake.device_exists(kNvmeVf2));

  ASSERT_TRUE(f.sriov->enable(addr(kNvmePf), 1));  // same count: nothing to do

  auto too_many = f.sriov->enable(addr(kNvmePf), 3);
  ASSERT_FALSE(too_many);
  EXPECT_NE(too_many.error().what().find("sriov_totalvfs=2"), std::string::npos);
  auto zero = f.sriov->enable(addr(kNvmePf), 0);
  ASSERT_FALSE(zero);
  EXPECT_NE(zero.error().what().find("use disable"), std::string::npos);
  EXPECT_EQ(f.fake.attr(kNvmePf, "sriov_numvfs"), "1");  // refused requests changed nothing

  ASSERT_TRUE(f.sriov->disable(addr(kNvmePf)));
  pf = f.sriov->pf(addr(kNvmePf));
  ASSERT_TRUE(pf);
  EXPECT_EQ(pf->num_vfs, 0u);
  EXPECT_TRUE(pf->vfs.empty());
  EXPECT_FALSE(f.fake.device_exists(kNvmeVf1));
  EXPECT_TRUE(f.sriov->disable(addr(kNvmePf)));  // idempotent
  EXPECT_EQ(f.fake.violations(), 0);

  auto not_sriov = f.sriov->enable(addr(kEdu), 1);
  ASSERT_FALSE(not_sriov);
  EXPECT_NE(not_sriov.error().what().find("not SR-IOV capable"), std::string::npos);
}

TEST(SriovBind, ToVfioAndBackToTheRecordedDriver) {
  Fixture f;
  ASSERT_TRUE(f.sriov->enable(addr(kNvmePf), 2));
  ASSERT_EQ(f.fake.driver(kNvmeVf1), "nvme");
  auto prev = f.sriov->bind(addr(kNvmeVf1), kVfioPci);
  ASSERT_TRUE(prev) << prev.error().message();
  EXPECT_EQ(*prev, "nvme");
  EXPECT_EQ(f.fake.driver(kNvmeVf1), "vfio-pci");
  EXPECT_EQ(f.fake.attr(kNvmeVf1, "driver_override"), "vfio-pci");
  EXPECT_EQ(f.fake.driver(kNvmeVf2), "nvme");  // the other VF is untouched

  auto again = f.sriov->bind(addr(kNvmeVf1), kVfioPci);  // already there: no-op
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, "vfio-pci");

  ASSERT_TRUE(f.sriov->restore(addr(kNvmeVf1), std::string("nvme")));
  EXPECT_EQ(f.fake.driver(kNvmeVf1), "nvme");
  EXPECT_EQ(f.fake.attr(kNvmeVf1, "driver_override"), "(null)");
}

TEST(SriovBind, UnboundVfReturnsToHostThroughDriversProbe) {
  Fixture f(true, /*autoprobe=*/false);
  ASSERT_TRUE(f.sriov->enable(addr(kNicPf), 1));
  ASSERT_FALSE(f.fake.driver("0000:03:00.1"));
  auto prev = f.sriov->bind(addr("0000:03:00.1"), kVfioPci);
  ASSERT_TRUE(prev) << prev.error().message();
  EXPECT_FALSE(*prev);
  ASSERT_TRUE(f.sriov->restore(addr("0000:03:00.1"), std::nullopt));
  // Override cleared, then drivers_probe lets the matching host driver (igbvf) take it.
  EXPECT_EQ(f.fake.driver("0000:03:00.1"), "igbvf");
  EXPECT_EQ(f.fake.attr("0000:03:00.1", "driver_override"), "(null)");
}

TEST(SriovBind, MissingVfioPciAndStubbornDriverAreClearErrors) {
  Fixture f(/*with_vfio=*/false);
  ASSERT_TRUE(f.sriov->enable(addr(kNvmePf), 1));
  auto r = f.sriov->bind(addr(kNvmeVf1), kVfioPci);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().what().find("modprobe vfio-pci"), std::string::npos) << r.error().what();
  EXPECT_NE(r.error().what().find(kNvmeVf1), std::string::npos);
  EXPECT_EQ(f.fake.driver(kNvmeVf1), "nvme");  // nothing was touched

  FakeSysfs& fake = f.fake;
  fake.add_driver("vfio-pci");
  fake.add_driver("stubborn", /*refuses_unbind=*/true);
  fake.add_device("0000:05:00.0", 0x1af4, 0x1041, std::string("stubborn"));
  auto s = f.sriov->bind(addr("0000:05:00.0"), kVfioPci);
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message().find("refuses"), std::string::npos) << s.error().message();
  EXPECT_NE(s.error().message().find("0000:05:00.0"), std::string::npos);
  EXPECT_EQ(fake.driver("0000:05:00.0"), "stubborn");
}

TEST(SriovPool, LeaseRecordRoundTripsAndRejectsGarbage) {
  LeaseRecord r;
  r.pid = 4242;
  r.vm = "web 1";
  r.vf = addr(kNvmeVf1);
  r.pf = addr(kNvmePf);
  r.restore_driver = "nvme";
  r.since = 1700000000;
  auto p = LeaseRecord::parse(r.serialize());
  ASSERT_TRUE(p) << p.error().message();
  EXPECT_EQ(p->pid, 4242);
  EXPECT_EQ(p->vm, "web 1");
  EXPECT_EQ(p->vf, r.vf);
  EXPECT_EQ(p->restore_driver, "nvme");
  EXPECT_EQ(p->since, 1700000000);
  EXPECT_FALSE(LeaseRecord::parse("pid=-3\n"));
  EXPECT_FALSE(LeaseRecord::parse("vf=0000:01:00\n"));
  EXPECT_FALSE(LeaseRecord::parse("garbage\n"));
}

TEST(SriovPool, AllocatesDistinctVfsListsAndReleases) {
  Fixture f;
  ASSERT_TRUE(f.sriov->enable(addr(kNvmePf), 2));
  VfPool pool(*f.sriov, f.fake.scratch("leases"));
  auto a = pool.allocate(addr(kNvmePf), "vm-a");
  ASSERT_TRUE(a) << a.error().message();
  auto b = pool.allocate(addr(kNvmePf), "vm-b");
  ASSERT_TRUE(b) << b.error().message();
  EXPECT_NE(a->vf(), b->vf());
  EXPECT_EQ(f.fake.driver(a->vf().to_string()), "vfio-pci");
  EXPECT_EQ(a->record().restore_driver, "nvme");
  auto c = pool.allocate(addr(kNvmePf), "vm-c");
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().what().find("no free VF on PF 0000:01:00.0"), std::string::npos);
  EXPECT_NE(c.error().what().find("2 leased by live processes"), std::string::npos);

  auto leases = pool.list_leases();
  ASSERT_TRUE(leases);
  ASSERT_EQ(leases->size(), 2u);
  for (const auto& l : *leases) {
    EXPECT_TRUE(l.alive);
    EXPECT_EQ(l.record.pid, ::getpid());
  }
  const std::string a_vf = a->vf().to_string();
  ASSERT_TRUE(pool.release(std::move(*a)));
  EXPECT_EQ(f.fake.driver(a_vf), "nvme");
  EXPECT_GE(f.fake.reset_count(a_vf), 1);
  leases = pool.list_leases();
  ASSERT_TRUE(leases);
  ASSERT_EQ(leases->size(), 1u);
  EXPECT_EQ((*leases)[0].record.vm, "vm-b");

  EXPECT_FALSE(pool.allocate(addr(kNvmePf), "bad\nname"));
  EXPECT_FALSE(pool.allocate(addr(kEdu), "vm-x"));
}

TEST(SriovPool, SkipsVfOnVfioPciOutsideIovirt) {
  Fixture f;
  ASSERT_TRUE(f.sriov->enable(addr(kNvmePf), 1));
  ASSERT_TRUE(f.sriov->bind(addr(kNvmeVf1), kVfioPci));  // someone else's passthrough
  VfPool pool(*f.sriov, f.fake.scratch("leases"));
  auto r = pool.allocate(addr(kNvmePf), "vm");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().what().find("1 on vfio-pci outside iovirt"), std::string::npos)
      << r.error().what();
  EXPECT_EQ(f.fake.driver(kNvmeVf1), "vfio-pci");
}

TEST(SriovPool, TwoThreadsNeverGetTheSameVf) {
  Fixture f;
  ASSERT_TRUE(f.sriov->enable(addr(kNvmePf), 2));
  const auto dir = f.fake.scratch("leases");
  // Each thread has its own pool (own lease fds): flock excludes per open file, so threads of
  // one process exclude each other as processes do.
  std::array<std::optional<Result<Lease>>, 2> got;
  {
    std::array<std::jthread, 2> threads;
    for (std::size_t i = 0; i < threads.size(); ++i) {
      threads[i] = std::jthread([&, i] {
        VfPool pool(*f.sriov, dir);
        got[i] = pool.allocate(addr(kNvmePf), "vm-t" + std::to_string(i));
      });
    }
  }
  ASSERT_TRUE(*got[0]) << got[0]->error().message();
  ASSERT_TRUE(*got[1]) << got[1]->error().message();
  EXPECT_NE((*got[0])->vf(), (*got[1])->vf());
  VfPool pool(*f.sriov, dir);
  ASSERT_TRUE(pool.release(std::move(**got[0])));
  ASSERT_TRUE(pool.release(std::move(**got[1])));
  EXPECT_EQ(f.fake.driver(kNvmeVf1), "nvme");
  EXPECT_EQ(f.fake.driver(kNvmeVf2), "nvme");
}

TEST(SriovPool, EmptyStaleLeaseIsTakenGarbledOneIsSkipped) {
  Fixture f;
  ASSERT_TRUE(f.sriov->enable(addr(kNvmePf), 2));
  const auto dir = f.fake.scratch("leases");
  std::filesystem::create_directories(dir);
  // Empty: a holder died between creating the file and writing it; the VF was never touched.
  { std::ofstream(dir / kNvmeVf1); }
  VfPool pool(*f.sriov, dir);
  auto a = pool.allocate(addr(kNvmePf), "vm-a");
  ASSERT_TRUE(a) << a.error().message();
  EXPECT_EQ(a->vf().to_string(), kNvmeVf1);
  EXPECT_EQ(a->record().restore_driver, "nvme");
  ASSERT_TRUE(pool.release(std::move(*a)));
  // Garbled: we cannot know what to restore, so the VF is left alone for an operator.
  { std::ofstream(dir / kNvmeVf1) << "pid=zz\n"; }
  auto b = pool.allocate(addr(kNvmePf), "vm-b");
  ASSERT_TRUE(b) << b.error().message();
  EXPECT_EQ(b->vf().to_string(), kNvmeVf2);
  EXPECT_EQ(f.fake.driver(kNvmeVf1), "nvme");
  auto c = pool.allocate(addr(kNvmePf), "vm-c");
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().what().find("1 failed to reclaim"), std::string::npos) << c.error().what();
  ASSERT_TRUE(pool.release(std::move(*b)));
}

// Reads exactly one line written by a child.
std::string read_line(int fd) {
  std::string s;
  char c = 0;
  while (::read(fd, &c, 1) == 1 && c != '\n') s += c;
  return s;
}

TEST(SriovPool, TwoProcessesNeverGetTheSameVf) {
  for (int round = 0; round < 3; ++round) {
    Fixture f;
    ASSERT_TRUE(f.sriov->enable(addr(kNvmePf), 2));
    const auto dir = f.fake.scratch("leases");
    std::array<int, 2> go{}, report{}, done{};
    ASSERT_EQ(::pipe(go.data()), 0);
    ASSERT_EQ(::pipe(report.data()), 0);
    ASSERT_EQ(::pipe(done.data()), 0);
    std::array<pid_t, 2> kids{};
    for (auto& kid : kids) {
      kid = ::fork();
      ASSERT_GE(kid, 0);
      if (kid == 0) {
        ::alarm(30);  // never outlive a broken parent
        ::close(go[1]);
        ::close(done[1]);  // else the parent's close never reaches us as EOF
        ::close(report[0]);
        char c = 0;
        (void)::read(go[0], &c, 1);  // start together: the parent closes the pipe
        VfPool pool(*f.sriov, dir);
        auto l = pool.allocate(addr(kNvmePf), "vm-" + std::to_string(::getpid()));
        std::string line = l ? l->vf().to_string() : "ERR " + l.error().message();
        line += '\n';
        (void)::write(report[1], line.data(), line.size());
        (void)::read(done[0], &c, 1);  // hold the lease until told
        int rc = l && pool.release(std::move(*l)) ? 0 : 1;
        ::_exit(rc);
      }
    }
    ::close(go[0]);
    ::close(go[1]);
    const std::string first = read_line(report[0]);
    const std::string second = read_line(report[0]);
    EXPECT_TRUE(PciAddress::parse(first)) << first;
    EXPECT_TRUE(PciAddress::parse(second)) << second;
    EXPECT_NE(first, second);

    // While both live: the parent gets nothing and list_leases shows both children alive.
    VfPool pool(*f.sriov, dir);
    EXPECT_FALSE(pool.allocate(addr(kNvmePf), "vm-parent"));
    auto leases = pool.list_leases();
    ASSERT_TRUE(leases);
    ASSERT_EQ(leases->size(), 2u);
    for (const auto& l : *leases) {
      EXPECT_TRUE(l.alive);
      EXPECT_TRUE(l.record.pid == kids[0] || l.record.pid == kids[1]) << l.record.pid;
    }
    ::close(done[1]);
    for (pid_t kid : kids) {
      int st = 0;
      ASSERT_EQ(::waitpid(kid, &st, 0), kid);
      EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    ::close(done[0]);
    ::close(report[0]);
    ::close(report[1]);
    leases = pool.list_leases();
    ASSERT_TRUE(leases);
    EXPECT_TRUE(leases->empty());
    EXPECT_EQ(f.fake.driver(kNvmeVf1), "nvme");
    EXPECT_EQ(f.fake.driver(kNvmeVf2), "nvme");
  }
}

TEST(SriovPool, ReclaimsTheVfOfASigkilledHolder) {
  Fixture f;
  ASSERT_TRUE(f.sriov->enable(addr(kNvmePf), 1));
  const auto dir = f.fake.scratch("leases");
  std::array<int, 2> report{};
  ASSERT_EQ(::pipe(report.data()), 0);
  pid_t kid = ::fork();
  ASSERT_GE(kid, 0);
  if (kid == 0) {
    ::alarm(30);  // never outlive a broken parent
    VfPool pool(*f.sriov, dir);
    auto l = pool.allocate(addr(kNvmePf), "doomed");
    std::string line = l ? l->vf().to_string() : "ERR " + l.error().message();
    line += '\n';
    (void)::write(report[1], line.data(), line.size());
    for (;;) ::pause();
  }
  ASSERT_EQ(read_line(report[0]), kNvmeVf1);
  VfPool pool(*f.sriov, dir);
  auto leases = pool.list_leases();
  ASSERT_TRUE(leases);
  ASSERT_EQ(leases->size(), 1u);
  EXPECT_TRUE((*leases)[0].alive);
  EXPECT_FALSE(pool.allocate(addr(kNvmePf), "too-early"));

  ASSERT_EQ(::kill(kid, SIGKILL), 0);
  int st = 0;
  ASSERT_EQ(::waitpid(kid, &st, 0), kid);
  ::close(report[0]);
  ::close(report[1]);

  leases = pool.list_leases();
  ASSERT_TRUE(leases);
  ASSERT_EQ(leases->size(), 1u);
  EXPECT_FALSE((*leases)[0].alive);  // stale: the lock died with its holder
  EXPECT_EQ((*leases)[0].record.pid, kid);
  EXPECT_EQ((*leases)[0].record.vm, "doomed");
  EXPECT_EQ(f.fake.driver(kNvmeVf1), "vfio-pci");  // the dead VM's binding is still there
  const int resets_before = f.fake.reset_count(kNvmeVf1);

  auto l = pool.allocate(addr(kNvmePf), "heir");
  ASSERT_TRUE(l) << l.error().message();
  EXPECT_EQ(l->vf().to_string(), kNvmeVf1);
  EXPECT_EQ(f.fake.reset_count(kNvmeVf1), resets_before + 1);  // reset on reclaim
  // The restored host driver (not "vfio-pci" left by the dead holder) is what gets recorded.
  EXPECT_EQ(l->record().restore_driver, "nvme");
  EXPECT_EQ(l->record().pid, ::getpid());
  EXPECT_EQ(f.fake.driver(kNvmeVf1), "vfio-pci");
  leases = pool.list_leases();
  ASSERT_TRUE(leases);
  ASSERT_EQ(leases->size(), 1u);
  EXPECT_TRUE((*leases)[0].alive);
  EXPECT_EQ((*leases)[0].record.vm, "heir");
  ASSERT_TRUE(pool.release(std::move(*l)));
  EXPECT_EQ(f.fake.driver(kNvmeVf1), "nvme");
}

}  // namespace
}  // namespace iovirt::sriov
