// NVMe virtualization management for `iovirt sriov enable` on an NVMe PF: the admin command
// sequence against a fake controller shaped like QEMU's SR-IOV NVMe (8 flexible queues, 4
// flexible vectors, 2 VFs), on the fake sysfs tree.
#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "iovirt/sriov/nvme_virt.hpp"
#include "iovirt/vmm/config.hpp"
#include "iovirt/vmm/sriov_cli.hpp"
#include "sriov_fake_sysfs.hpp"

namespace iovirt::sriov {
namespace {

using namespace std::chrono_literals;

// Plays the controller: Identify CNS 14h/15h from its state; Virtualization Management applies
// primary allocation (pending until reset() is called), secondary assign/online/offline, with
// the checks the spec makes (assign only while offline, online only with >= 2 VQ and >= 1 VI).
class FakeNvme : public NvmeAdmin {
 public:
  struct Sec {
    std::uint16_t scid, vfn, nvq = 0, nvi = 0;
    bool online = false;
  };
  std::uint32_t vqfrt = 8, vifrt = 4;
  std::uint16_t vqrfap = 8, virfap = 4, vqfrsm = 4, vifrsm = 2;
  std::uint8_t crt = 3;
  std::vector<Sec> secs{{1, 1}, {2, 2}};
  std::vector<NvmeAdminCmd> log;
  bool primary_pending = false;

  void reset() {
    if (primary_pending) vqrfap = virfap = 0;
    primary_pending = false;
  }
  Result<std::uint32_t> submit(const NvmeAdminCmd& c) override {
    log.push_back(c);
    if (c.opcode == kNvmeOpcIdentify) {
      std::memset(c.data.data(), 0, c.data.size());
      std::uint8_t* p = c.data.data();
      if ((c.cdw10 & 0xff) == kNvmeCnsPrimaryCaps) {
        p[4] = crt;
        std::memcpy(p + 32, &vqfrt, 4);
        std::memcpy(p + 40, &vqrfap, 2);
        std::memcpy(p + 44, &vqfrsm, 2);
        std::memcpy(p + 64, &vifrt, 4);
        std::memcpy(p + 72, &virfap, 2);
        std::memcpy(p + 76, &vifrsm, 2);
      } else {
        p[0] = static_cast<std::uint8_t>(secs.size());
        for (std::size_t i = 0; i < secs.size(); ++i) {
          std::uint8_t* e = p + 32 + 32 * i;
          std::memcpy(e, &secs[i].scid, 2);
          e[4] = secs[i].online ? 1 : 0;
          std::memcpy(e + 8, &secs[i].vfn, 2);
          std::memcpy(e + 10, &secs[i].nvq, 2);
          std::memcpy(e + 12, &secs[i].nvi, 2);
        }
      }
      return 0u;
    }
    if (c.opcode != kNvmeOpcVirtMgmt) return fail("unexpected opcode");
    const unsigned act = c.cdw10 & 0xf, rt = (c.cdw10 >> 8) & 7, id = c.cdw10 >> 16;
    const auto nr = static_cast<std::uint16_t>(c.cdw11 & 0xffff);
    if (act == 1) {
      if (id != 0 || nr != 0) return fail("status 0x2 (this fake only releases)");
      primary_pending = true;
      return 0u;
    }
    for (auto& s : secs) {
      if (s.scid != id) continue;
      if (act == 7) { s.online = false; return 0u; }
      if (act == 8) {
        if (s.online || vqrfap != 0) return fail("status 0x21 (invalid resource identifier)");
        (rt == 0 ? s.nvq : s.nvi) = nr;
        return 0u;
      }
      if (act == 9) {
        if (s.nvq < 2 || s.nvi < 1) return fail("status 0x21");
        s.online = true;
        return 0u;
      }
    }
    return fail("status 0x1f (invalid controller identifier)");
  }
};

TEST(SriovNvme, VirtMgmtEncoding) {
  EXPECT_EQ(nvme_virt_mgmt_cdw10(NvmeVirtAct::SecondaryAssign, NvmeResource::Interrupts, 2), 0x00020108u);
  EXPECT_EQ(nvme_virt_mgmt_cdw10(NvmeVirtAct::PrimaryFlexibleAllocation, NvmeResource::Queues, 0), 1u);
}

struct NvmeFixture {
  NvmeFixture() {
    fake.add_driver("nvme");
    fake.add_driver("vfio-pci");
    fake.add_pf({.addr = "0000:01:00.0", .vendor = 0x1b36, .device = 0x0010, .vf_device = 0x0010,
                 .driver = "nvme", .vf_driver = "nvme", .total_vfs = 2, .autoprobe = true,
                 .netdevs = {}});
    const auto pf = fake.root() / "devices/pci0000:00/0000:01:00.0";
    std::ofstream(pf / "class") << "0x010802\n";
    std::filesystem::create_directories(pf / "nvme/nvme0");
    std::ofstream(pf / "nvme/nvme0/state") << "live\n";
    env.sysfs_root = fake.root();
    env.run_dir = fake.scratch("run");
    env.options.timeout = 1500ms;
    env.options.poll_interval = 1ms;
    env.options.settle = [this] {
      fake.settle();
      // The controller reset lands when the fake kernel applies the PF's `reset` write.
      if (fake.reset_count("0000:01:00.0") > resets_seen) {
        resets_seen = fake.reset_count("0000:01:00.0");
        ctrl->reset();
      }
    };
    env.nvme_open = [this](const std::string& c) -> Result<std::unique_ptr<NvmeAdmin>> {
      opened.push_back(c);
      struct Proxy : NvmeAdmin {
        explicit Proxy(FakeNvme* n) : n_(n) {}
        Result<std::uint32_t> submit(const NvmeAdminCmd& cmd) override { return n_->submit(cmd); }
        FakeNvme* n_;
      };
      return std::unique_ptr<NvmeAdmin>(new Proxy(ctrl.get()));
    };
  }
  int run(const std::vector<std::string>& args, std::string& out, std::string& err) {
    auto p = parse_args(args);
    if (!p) {
      err = p.error().message();
      return 2;
    }
    return run_sriov(p->sriov, env, out, err);
  }
  testing::FakeSysfs fake;
  std::unique_ptr<FakeNvme> ctrl = std::make_unique<FakeNvme>();
  SriovCliEnv env;
  std::vector<std::string> opened;
  int resets_seen = 0;
};

TEST(SriovNvme, EnableRunsTheVirtualizationManagementSequence) {
  NvmeFixture f;
  std::string out, err;
  ASSERT_EQ(f.run({"sriov", "enable", "0000:01:00.0", "2"}, out, err), 0) << err;
  // Primary's flexible resources released, then the PF reset (once), then each secondary
  // assigned 8/2 = 4 queues and 4/2 = 2 vectors and set online.
  EXPECT_EQ(f.fake.reset_count("0000:01:00.0"), 1);
  EXPECT_EQ(f.ctrl->vqrfap, 0);
  for (const auto& s : f.ctrl->secs) {
    EXPECT_TRUE(s.online) << s.scid;
    EXPECT_EQ(s.nvq, 4);
    EXPECT_EQ(s.nvi, 2);
  }
  std::vector<std::pair<std::uint32_t, std::uint32_t>> vm;
  for (const auto& c : f.ctrl->log)
    if (c.opcode == kNvmeOpcVirtMgmt) vm.emplace_back(c.cdw10, c.cdw11);
  const std::vector<std::pair<std::uint32_t, std::uint32_t>> want = {
      {0x101, 0}, {0x001, 0},                              // primary: VI 0, VQ 0
      {0x10008, 4}, {0x10108, 2}, {0x10009, 0},            // controller 1: VQ 4, VI 2, online
      {0x20008, 4}, {0x20108, 2}, {0x20009, 0}};           // controller 2
  EXPECT_EQ(vm, want);
  EXPECT_EQ(f.opened, (std::vector<std::string>{"nvme0", "nvme0"}));  // reopened after the reset
  // autoprobe was on: restored, and the online VFs were probed by the host's nvme driver.
  f.fake.settle();
  EXPECT_EQ(f.fake.attr("0000:01:00.0", "sriov_drivers_autoprobe"), "1");
  EXPECT_EQ(f.fake.driver("0000:01:00.1"), "nvme");
  EXPECT_EQ(f.fake.driver("0000:01:00.2"), "nvme");
  EXPECT_TRUE(out.find("2 VFs enabled") != std::string::npos) << out;
}

TEST(SriovNvme, TooFewResourcesAndNoFlexibleResources) {
  NvmeFixture f;
  f.ctrl->vqfrt = 2;  // one VF could get 2 queues, two cannot
  std::string out, err;
  EXPECT_EQ(f.run({"sriov", "enable", "0000:01:00.0", "2"}, out, err), 1);
  EXPECT_EQ(err, "NVMe PF 0000:01:00.0: 2 flexible queues and 4 vectors cannot give 2 VFs 2 queues and 1 vector each: enable fewer");
  EXPECT_FALSE(f.fake.device_exists("0000:01:00.1"));

  NvmeFixture g;
  g.ctrl->crt = 0;  // a controller whose VFs come with private resources
  out.clear();
  err.clear();
  ASSERT_EQ(g.run({"sriov", "enable", "0000:01:00.0", "1"}, out, err), 0) << err;
  EXPECT_TRUE(g.fake.device_exists("0000:01:00.1"));
  for (const auto& c : g.ctrl->log) EXPECT_NE(c.opcode, kNvmeOpcVirtMgmt);
}

TEST(SriovNvme, NvmePfWithoutDriverIsAClearError) {
  NvmeFixture f;
  std::filesystem::remove_all(f.fake.root() / "devices/pci0000:00/0000:01:00.0/nvme");
  std::string out, err;
  EXPECT_EQ(f.run({"sriov", "enable", "0000:01:00.0", "1"}, out, err), 1);
  EXPECT_TRUE(err.find("has no controller node (not bound to the nvme driver?)") != std::string::npos) << err;
}

}  // namespace
}  // namespace iovirt::sriov
