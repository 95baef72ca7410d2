// `iovirt sriov ...` and `iovirt run --vf`: argument parsing (pure), and the commands run on the
// fake sysfs tree (tests/unit/sriov_fake_sysfs.hpp) with a fake VfNetConfig standing in for
// rtnetlink: table and JSON output, refusals with one-line errors, VF settings read back.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <utility>

#include "iovirt/sriov/pool.hpp"
#include "iovirt/sriov/vf_net.hpp"
#include "iovirt/vmm/config.hpp"
#include "iovirt/vmm/sriov_cli.hpp"
#include "iovirt/vmm/vf_assign.hpp"
#include "sriov_fake_sysfs.hpp"

namespace iovirt {
namespace {

using namespace std::chrono_literals;
using sriov::testing::FakeSysfs;

constexpr const char* kNvmePf = "0000:01:00.0";
constexpr const char* kNvmeVf1 = "0000:01:00.1";
constexpr const char* kNicPf = "0000:03:00.0";
constexpr const char* kNicVf2 = "0000:03:00.2";
constexpr const char* kEdu = "0000:02:00.0";

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

// A strict JSON syntax check (RFC 8259 grammar, no extensions), enough to prove --json output
// parses; values are checked by substring in the tests.
class JsonCheck {
 public:
  static bool valid(const std::string& s) {
    JsonCheck j(s);
    j.ws();
    if (!j.value()) return false;
    j.ws();
    return j.p_ == s.size() || (j.p_ + 1 == s.size() && s[j.p_] == '\n');
  }

 private:
  explicit JsonCheck(const std::string& s) : s_(s) {}
  void ws() {
    while (p_ < s_.size() && (s_[p_] == ' ' || s_[p_] == '\t' || s_[p_] == '\r' || (s_[p_] == '\n' && p_ + 1 < s_.size()))) ++p_;
  }
  bool lit(const char* l) {
    std::string t(l);
    if (s_.compare(p_, t.size(), t) != 0) return false;
    p_ += t.size();
    return true;
  }
  bool str() {
    if (p_ >= s_.size() || s_[p_] != '"') return false;
    for (++p_; p_ < s_.size(); ++p_) {
      const auto c = static_cast<unsigned char>(s_[p_]);
      if (c == '"') { ++p_; return true; }
      if (c < 0x20) return false;
      if (c == '\\') {
        ++p_;
        if (p_ >= s_.size()) return false;
        if (s_[p_] == 'u') {
          for (int i = 0; i < 4; ++i)
            if (++p_ >= s_.size() || !std::isxdigit(static_cast<unsigned char>(s_[p_]))) return false;
        } else if (std::string("\"\\/bfnrt").find(s_[p_]) == std::string::npos) {
          return false;
        }
      }
    }
    return false;
  }
  bool num() {
    std::size_t b = p_;
    if (p_ < s_.size() && s_[p_] == '-') ++p_;
    while (p_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[p_]))) ++p_;
    return p_ > b && std::isdigit(static_cast<unsigned char>(s_[p_ - 1]));
  }
  bool value() {
    if (p_ >= s_.size()) return false;
    switch (s_[p_]) {
      case '{': {
        ++p_;
        ws();
        if (p_ < s_.size() && s_[p_] == '}') { ++p_; return true; }
        for (;;) {
          ws();
          if (!str()) return false;
          ws();
          if (!lit(":")) return false;
          ws();
          if (!value()) return false;
          ws();
          if (lit("}")) return true;
          if (!lit(",")) return false;
        }
      }
      case '[': {
        ++p_;
        ws();
        if (p_ < s_.size() && s_[p_] == ']') { ++p_; return true; }
        for (;;) {
          ws();
          if (!value()) return false;
          ws();
          if (lit("]")) return true;
          if (!lit(",")) return false;
        }
      }
      case '"': return str();
      case 't': return lit("true");
      case 'f': return lit("false");
      case 'n': return lit("null");
      default: return num();
    }
  }
  const std::string& s_;
  std::size_t p_ = 0;
};

// Stands in for rtnetlink: per (netdev, vf) settings; `ignore_trust` models a driver that
// accepts IFLA_VF_TRUST and does nothing.
class FakeVfNet : public sriov::VfNetConfig {
 public:
  Status set(const std::string& dev, unsigned vf, const sriov::VfNetSettings& s) override {
    ++sets;
    if (dev != "enp3s0f0") return fail("no network interface " + dev);
    auto& cur = state[{dev, vf}];
    if (s.mac) cur.mac = s.mac;
    if (s.vlan) { cur.vlan = s.vlan; cur.qos = s.qos.value_or(0); }
    if (s.spoofchk) cur.spoofchk = s.spoofchk;
    if (s.trust && !ignore_trust) cur.trust = s.trust;
    if (s.link_state) cur.link_state = s.link_state;
    if (s.min_tx_rate) cur.min_tx_rate = s.min_tx_rate;
    if (s.max_tx_rate) cur.max_tx_rate = s.max_tx_rate;
    return {};
  }
  Result<sriov::VfNetSettings> get(const std::string& dev, unsigned vf) override {
    if (dev != "enp3s0f0") return fail("no network interface " + dev);
    auto it = state.find({dev, vf});
    sriov::VfNetSettings s;
    s.mac = std::array<std::uint8_t, 6>{};
    s.vlan = 0;
    s.qos = 0;
    s.spoofchk = true;
    s.trust = false;
    s.link_state = sriov::VfLinkState::Auto;
    s.min_tx_rate = 0;
    s.max_tx_rate = 0;
    if (it == state.end()) return s;
    const auto& c = it->second;
    if (c.mac) s.mac = c.mac;
    if (c.vlan) { s.vlan = c.vlan; s.qos = c.qos; }
    if (c.spoofchk) s.spoofchk = c.spoofchk;
    if (c.trust) s.trust = c.trust;
    if (c.link_state) s.link_state = c.link_state;
    if (c.min_tx_rate) s.min_tx_rate = c.min_tx_rate;
    if (c.max_tx_rate) s.max_tx_rate = c.max_tx_rate;
    return s;
  }
  std::map<std::pair<std::string, unsigned>, sriov::VfNetSettings> state;
  bool ignore_trust = false;
  int sets = 0;
};

// The lab's shape (as in test_sriov.cpp): an NVMe PF with 2 VFs, a NIC PF (7 VFs, netdev
// enp3s0f0), an edu device without SR-IOV.
struct CliFixture {
  CliFixture() {
    fake.add_driver("nvme");
    fake.add_driver("igb");
    fake.add_driver("igbvf");
    fake.add_driver("vfio-pci");
    fake.add_pf({.addr = kNvmePf, .vendor = 0x1b36, .device = 0x0010, .vf_device = 0x0010,
                 .driver = "nvme", .vf_driver = "nvme", .total_vfs = 2, .autoprobe = true,
                 .netdevs = {}});
    fake.add_pf({.addr = kNicPf, .vendor = 0x8086, .device = 0x10c9, .vf_device = 0x10ca,
                 .driver = "igb", .vf_driver = "igbvf", .total_vfs = 7, .autoprobe = true,
                 .netdevs = {"enp3s0f0"}});
    fake.add_device(kEdu, 0x1234, 0x11e8);
    env.sysfs_root = fake.root();
    env.run_dir = fake.scratch("run");
    env.options.timeout = 1500ms;
    env.options.poll_interval = 1ms;
    env.options.settle = [this] { fake.settle(); };
    env.net = &net;
  }
  // Parses like main() and runs; returns {exit status, stdout, stderr}.
  struct Out {
    int rc = -1;
    std::string out, err;
  };
  Out run(const std::vector<std::string>& args) {
    Out o;
    auto p = parse_args(args);
    if (!p) {
      o.rc = 2;
      o.err = p.error().message();
      return o;
    }
    EXPECT_EQ(p->command, Command::Sriov);
    o.rc = run_sriov(p->sriov, env, o.out, o.err);
    EXPECT_EQ(o.err.find('\n'), std::string::npos) << o.err;
    return o;
  }
  FakeSysfs fake;
  FakeVfNet net;
  SriovCliEnv env;
};

PciAddress addr(const char* s) { return PciAddress::parse(s).value_or(PciAddress{}); }

TEST(SriovCliParse, SubcommandsAndJsonAnywhere) {
  auto p = parse_args({"sriov", "enable", kNvmePf, "2", "--json"});
  ASSERT_TRUE(p) << p.error().message();
  EXPECT_EQ(p->command, Command::Sriov);
  EXPECT_EQ(p->sriov.command, SriovCommand::Enable);
  EXPECT_EQ(p->sriov.device, addr(kNvmePf));
  EXPECT_EQ(p->sriov.count, 2u);
  EXPECT_TRUE(p->sriov.json);

  p = parse_args({"sriov", "--json", "list"});
  ASSERT_TRUE(p);
  EXPECT_EQ(p->sriov.command, SriovCommand::List);
  EXPECT_TRUE(p->sriov.json);

  p = parse_args({"sriov", "bind", kNvmeVf1, "host"});
  ASSERT_TRUE(p);
  EXPECT_EQ(p->sriov.command, SriovCommand::Bind);
  EXPECT_FALSE(p->sriov.to_vfio);

  p = parse_args({"sriov", "config", "eni10np1:vf1",
                  "mac=52:54:00:12:34:56,vlan=100,qos=3,spoofchk=off,trust=on,state=disable,"
                  "min_tx_rate=10,max_tx_rate=1000"});
  ASSERT_TRUE(p) << p.error().message();
  const auto& a = p->sriov;
  EXPECT_EQ(a.command, SriovCommand::Config);
  EXPECT_FALSE(a.target.pci);
  EXPECT_EQ(a.target.netdev, "eni10np1");
  EXPECT_EQ(a.target.index, 1u);
  EXPECT_EQ(sriov::format_mac(*a.settings.mac), "52:54:00:12:34:56");
  EXPECT_EQ(a.settings.vlan, 100);
  EXPECT_EQ(a.settings.qos, 3);
  EXPECT_EQ(a.settings.spoofchk, false);
  EXPECT_EQ(a.settings.trust, true);
  EXPECT_EQ(a.settings.link_state, sriov::VfLinkState::Disable);
  EXPECT_EQ(a.settings.min_tx_rate, 10u);
  EXPECT_EQ(a.settings.max_tx_rate, 1000u);
  EXPECT_EQ(sriov::format_vf_settings(a.settings),
            "mac=52:54:00:12:34:56,vlan=100,qos=3,spoofchk=off,trust=on,state=disable,"
            "min_tx_rate=10,max_tx_rate=1000");

  p = parse_args({"sriov", "config", kNvmeVf1});
  ASSERT_TRUE(p);
  EXPECT_EQ(p->sriov.target.pci, addr(kNvmeVf1));
  EXPECT_TRUE(p->sriov.settings.empty());

  p = parse_args({"sriov", "leases", "--help"});
  ASSERT_TRUE(p);
  EXPECT_EQ(p->command, Command::Help);
}

TEST(SriovCliParse, BadInputsAreOneLineUsageErrors) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"sriov"}, "no subcommand"},
      {{"sriov", "frob"}, "unknown subcommand 'frob'"},
      {{"sriov", "enable", "01:00.0", "2"}, "PF '01:00.0' is not a PCI address"},
      {{"sriov", "enable", kNvmePf}, "usage: iovirt sriov enable PF N"},
      {{"sriov", "enable", kNvmePf, "0"}, "iovirt sriov disable PF"},
      {{"sriov", "enable", kNvmePf, "two"}, "'two' is not a positive integer"},
      {{"sriov", "disable"}, "usage: iovirt sriov disable PF"},
      {{"sriov", "list", "extra"}, "usage: iovirt sriov list"},
      {{"sriov", "bind", kNvmeVf1, "igb"}, "'igb' is not vfio or host"},
      {{"sriov", "config", "eth0"}, "neither a VF's PCI address"},
      {{"sriov", "config", "eth0:vfx"}, "neither a VF's PCI address"},
      {{"sriov", "config", "eth0:vf0", "mac=01:00:5e:00:00:01"}, "multicast"},
      {{"sriov", "config", "eth0:vf0", "vlan=4095"}, "vlan='4095' is not a number in 0..4094"},
      {{"sriov", "config", "eth0:vf0", "qos=3"}, "qos= needs vlan="},
      {{"sriov", "config", "eth0:vf0", "trust=maybe"}, "trust='maybe' is not on or off"},
      {{"sriov", "config", "eth0:vf0", "state=up"}, "not auto, enable or disable"},
      {{"sriov", "config", "eth0:vf0", "speed=10"}, "unknown VF setting 'speed'"},
      {{"sriov", "config", "eth0:vf0", "vlan=1,vlan=2"}, "'vlan' given twice"},
      {{"sriov", "config", "eth0:vf0", "min_tx_rate=100,max_tx_rate=10"}, "above max_tx_rate"},
  };
  for (const auto& [args, want] : cases) {
    auto p = parse_args(args);
    ASSERT_FALSE(p) << args.back();
    EXPECT_TRUE(contains(p.error().message(), want)) << p.error().message();
    EXPECT_EQ(p.error().message().find('\n'), std::string::npos);
  }
}

TEST(SriovCliParse, RunVfOption) {
  auto p = parse_args({"run", "--kernel", "k", "--vf", "pf=0000:03:00.0,mac=52:54:00:00:00:07,vlan=5",
                       "--vf=pf=0000:01:00.0"});
  ASSERT_TRUE(p) << p.error().message();
  ASSERT_EQ(p->vm.vfs.size(), 2u);
  EXPECT_EQ(p->vm.vfs[0].pf, addr(kNicPf));
  EXPECT_EQ(sriov::format_mac(*p->vm.vfs[0].net.mac), "52:54:00:00:00:07");
  EXPECT_EQ(p->vm.vfs[0].net.vlan, 5);
  EXPECT_EQ(p->vm.vfs[1].pf, addr(kNvmePf));
  EXPECT_TRUE(p->vm.vfs[1].net.empty());
  for (const auto& [v, want] : std::vector<std::pair<std::string, std::string>>{
           {"mac=52:54:00:00:00:07", "pf=DDDD:BB:DD.F is required"},
           {"pf=03:00.0", "--vf: pf='03:00.0' is not a PCI address"},
           {"pf=0000:03:00.0,vlan=9999", "--vf: vlan='9999'"},
           {"pf=0000:03:00.0,color=red", "--vf: unknown VF setting 'color'"},
           {"pf=0000:03:00.0,", "is not KEY=VALUE (e.g. pf=0000:01:00.0)"},
       }) {
    auto r = parse_args({"run", "--kernel", "k", "--vf", v});
    ASSERT_FALSE(r) << v;
    EXPECT_TRUE(contains(r.error().message(), want)) << r.error().message();
  }
}

TEST(SriovCli, ListTableAndJson) {
  CliFixture f;
  f.fake.set_numvfs(kNvmePf, 2);
  auto o = f.run({"sriov", "list"});
  ASSERT_EQ(o.rc, 0) << o.err;
  EXPECT_TRUE(contains(o.out, "PF 0000:01:00.0  1b36:0010  driver nvme  netdev -  VFs 2/2  autoprobe on"))
      << o.out;
  EXPECT_TRUE(contains(o.out, "PF 0000:03:00.0  8086:10c9  driver igb  netdev enp3s0f0  VFs 0/7")) << o.out;
  EXPECT_TRUE(contains(o.out, "(no VFs enabled: iovirt sriov enable 0000:03:00.0 N)")) << o.out;
  EXPECT_TRUE(contains(o.out, "VF  ADDRESS       DRIVER  IOMMU  LEASE")) << o.out;
  EXPECT_TRUE(contains(o.out, "0   0000:01:00.1  nvme    ")) << o.out;
  EXPECT_FALSE(contains(o.out, "0000:02:00.0")) << "edu has no SR-IOV: " << o.out;

  o = f.run({"sriov", "list", "--json"});
  ASSERT_EQ(o.rc, 0) << o.err;
  EXPECT_TRUE(JsonCheck::valid(o.out)) << o.out;
  EXPECT_TRUE(contains(o.out, R"({"address":"0000:01:00.0","vendor":"1b36","device":"0010","driver":"nvme","netdevs":[],"total_vfs":2,"num_vfs":2,"drivers_autoprobe":true,"leased_vfs":0,"vfs":[{"index":0,"address":"0000:01:00.1","driver":"nvme","iommu_group":)"))
      << o.out;
  EXPECT_TRUE(contains(o.out, R"("netdevs":["enp3s0f0"],"total_vfs":7,"num_vfs":0)")) << o.out;
}

TEST(SriovCli, EnableDisableAndTheirRefusals) {
  CliFixture f;
  auto o = f.run({"sriov", "enable", kNvmePf, "2"});
  ASSERT_EQ(o.rc, 0) << o.err;
  EXPECT_TRUE(contains(o.out, "PF 0000:01:00.0: 2 VFs enabled")) << o.out;
  EXPECT_TRUE(f.fake.device_exists("0000:01:00.2"));
  // The same count again is a no-op; a different one goes through 0 (the library does it).
  o = f.run({"sriov", "enable", kNvmePf, "1", "--json"});
  ASSERT_EQ(o.rc, 0) << o.err;
  EXPECT_TRUE(JsonCheck::valid(o.out)) << o.out;
  EXPECT_TRUE(contains(o.out, R"("num_vfs":1,)")) << o.out;
  EXPECT_FALSE(f.fake.device_exists("0000:01:00.2"));
  EXPECT_EQ(f.fake.violations(), 0);

  o = f.run({"sriov", "enable", kNvmePf, "3"});
  EXPECT_EQ(o.rc, 1);
  EXPECT_TRUE(contains(o.err, "enable 3 VFs on PF 0000:01:00.0: the PF supports at most 2 (sriov_totalvfs)")) << o.err;
  o = f.run({"sriov", "enable", "0000:09:00.0", "1"});
  EXPECT_EQ(o.rc, 1);
  EXPECT_TRUE(contains(o.err, "no PCI device 0000:09:00.0")) << o.err;
  o = f.run({"sriov", "enable", kEdu, "1"});
  EXPECT_EQ(o.rc, 1);
  EXPECT_TRUE(contains(o.err, "not SR-IOV capable")) << o.err;
  o = f.run({"sriov", "disable", kEdu});
  EXPECT_EQ(o.rc, 1);
  EXPECT_TRUE(contains(o.err, "not SR-IOV capable")) << o.err;

  // A VF leased to a live VM blocks disable and re-enable.
  sriov::Sriov s(Sysfs(f.fake.root()), f.env.options);
  sriov::VfPool pool(s, f.env.lease_dir());
  auto lease = pool.allocate(addr(kNvmePf), "vm-one");
  ASSERT_TRUE(lease) << lease.error().message();
  o = f.run({"sriov", "disable", kNvmePf});
  EXPECT_EQ(o.rc, 1);
  EXPECT_TRUE(contains(o.err, "disable the VFs of PF 0000:01:00.0: VF 0000:01:00.1 is leased to VM 'vm-one' (pid " +
                                  std::to_string(::getpid()) + "): stop that VM first"))
      << o.err;
  o = f.run({"sriov", "enable", kNvmePf, "2"});
  EXPECT_EQ(o.rc, 1);
  EXPECT_TRUE(contains(o.err, "is leased to VM 'vm-one'")) << o.err;
  EXPECT_TRUE(f.fake.device_exists(kNvmeVf1));
  ASSERT_TRUE(pool.release(std::move(*lease)));

  o = f.run({"sriov", "disable", kNvmePf});
  ASSERT_EQ(o.rc, 0) << o.err;
  EXPECT_TRUE(contains(o.out, "VFs 0/2")) << o.out;
  EXPECT_FALSE(f.fake.device_exists(kNvmeVf1));
}

TEST(SriovCli, BindToVfioAndBackAndRefusals) {
  CliFixture f;
  f.fake.set_numvfs(kNvmePf, 2);
  auto o = f.run({"sriov", "bind", kNvmeVf1, "vfio"});
  ASSERT_EQ(o.rc, 0) << o.err;
  EXPECT_EQ(o.out, "VF 0000:01:00.1: nvme -> vfio-pci\n");
  EXPECT_EQ(f.fake.driver(kNvmeVf1), "vfio-pci");
  o = f.run({"sriov", "bind", kNvmeVf1, "host", "--json"});
  ASSERT_EQ(o.rc, 0) << o.err;
  EXPECT_EQ(o.out, R"({"vf":"0000:01:00.1","pf":"0000:01:00.0","previous_driver":"vfio-pci","driver":"nvme"})"
                   "\n");
  EXPECT_EQ(f.fake.driver(kNvmeVf1), "nvme");
  EXPECT_EQ(f.fake.attr(kNvmeVf1, "driver_override"), "(null)");

  o = f.run({"sriov", "bind", kNvmePf, "vfio"});
  EXPECT_EQ(o.rc, 1);
  EXPECT_TRUE(contains(o.err, "not an SR-IOV VF")) << o.err;
  o = f.run({"sriov", "bind", kEdu, "vfio"});
  EXPECT_EQ(o.rc, 1);
  EXPECT_TRUE(contains(o.err, "not an SR-IOV VF")) << o.err;

  // A VF already in a VM (leased by a live process) is not moved.
  sriov::Sriov s(Sysfs(f.fake.root()), f.env.options);
  sriov::VfPool pool(s, f.env.lease_dir());
  auto lease = pool.allocate(addr(kNvmePf), "vm-two");
  ASSERT_TRUE(lease);
  o = f.run({"sriov", "bind", lease->vf().to_string(), "host"});
  EXPECT_EQ(o.rc, 1);
  EXPECT_TRUE(contains(o.err, "bind VF " + lease->vf().to_string() + " to host: VF " +
                                  lease->vf().to_string() + " is leased to VM 'vm-two'"))
      << o.err;
  EXPECT_EQ(f.fake.driver(lease->vf().to_string()), "vfio-pci");
  ASSERT_TRUE(pool.release(std::move(*lease)));
}

TEST(SriovCli, LeasesShowHeldAndStale) {
  CliFixture f;
  f.fake.set_numvfs(kNvmePf, 2);
  auto o = f.run({"sriov", "leases"});
  ASSERT_EQ(o.rc, 0) << o.err;
  EXPECT_TRUE(contains(o.out, "no VF leases in " + f.env.lease_dir().string())) << o.out;

  sriov::Sriov s(Sysfs(f.fake.root()), f.env.options);
  sriov::VfPool pool(s, f.env.lease_dir());
  auto held = pool.allocate(addr(kNvmePf), "web");
  ASSERT_TRUE(held);
  {
    auto dropped = pool.allocate(addr(kNvmePf), "db");
    ASSERT_TRUE(dropped);
    // Destroyed without release(): the state a killed holder leaves (lock free, file kept).
  }
  o = f.run({"sriov", "leases"});
  ASSERT_EQ(o.rc, 0) << o.err;
  const std::string pid = std::to_string(::getpid());
  EXPECT_TRUE(contains(o.out, "VF            PF            VM   PID")) << o.out;
  EXPECT_TRUE(contains(o.out, "0000:01:00.1  0000:01:00.0  web  " + pid)) << o.out;
  EXPECT_TRUE(contains(o.out, "held")) << o.out;
  EXPECT_TRUE(contains(o.out, "0000:01:00.2  0000:01:00.0  db   " + pid)) << o.out;
  EXPECT_TRUE(contains(o.out, "stale (reclaimed on next allocation)")) << o.out;
  EXPECT_TRUE(contains(o.out, "nvme")) << o.out;

  o = f.run({"sriov", "leases", "--json"});
  ASSERT_EQ(o.rc, 0) << o.err;
  EXPECT_TRUE(JsonCheck::valid(o.out)) << o.out;
  EXPECT_TRUE(contains(o.out, R"({"vf":"0000:01:00.1","pf":"0000:01:00.0","vm":"web","pid":)" + pid +
                                  R"(,"alive":true,)"))
      << o.out;
  EXPECT_TRUE(contains(o.out, R"("vm":"db","pid":)" + pid + R"(,"alive":false,)")) << o.out;
  EXPECT_TRUE(contains(o.out, R"("restore_driver":"nvme")")) << o.out;

  // list shows the same truth per VF: one live lease.
  o = f.run({"sriov", "list", "--json"});
  EXPECT_TRUE(contains(o.out, R"("leased_vfs":1,)")) << o.out;
  EXPECT_TRUE(contains(o.out, R"("lease":{"vm":"web","pid":)" + pid + R"(,"alive":true,)")) << o.out;
  o = f.run({"sriov", "list"});
  EXPECT_TRUE(contains(o.out, "web (pid " + pid + ")")) << o.out;
  EXPECT_TRUE(contains(o.out, "stale: db (pid " + pid + ")")) << o.out;
  ASSERT_TRUE(pool.release(std::move(*held)));
}

TEST(SriovCli, ConfigByPciAddressSetsAndVerifies) {
  CliFixture f;
  f.fake.set_numvfs(kNicPf, 2);
  auto o = f.run({"sriov", "config", kNicVf2, "mac=52:54:00:aa:bb:cc,vlan=42,qos=5,trust=on,max_tx_rate=500"});
  ASSERT_EQ(o.rc, 0) << o.err;
  EXPECT_TRUE(contains(o.out, "VF 1 of enp3s0f0 (0000:03:00.2): set and verified")) << o.out;
  EXPECT_TRUE(contains(o.out, "mac          52:54:00:aa:bb:cc")) << o.out;
  EXPECT_TRUE(contains(o.out, "vlan         42")) << o.out;
  EXPECT_TRUE(contains(o.out, "max_tx_rate  500")) << o.out;
  // VF index 1 of the PF's netdev (virtfn1), not the PCI function number.
  auto st = f.net.state.find({"enp3s0f0", 1});
  ASSERT_NE(st, f.net.state.end());
  EXPECT_EQ(st->second.qos, 5);

  o = f.run({"sriov", "config", "enp3s0f0:vf1", "--json"});
  ASSERT_EQ(o.rc, 0) << o.err;
  EXPECT_TRUE(JsonCheck::valid(o.out)) << o.out;
  EXPECT_EQ(o.out, R"({"vf":"enp3s0f0:vf1","pf_netdev":"enp3s0f0","index":1,"pci":null,"mac":"52:54:00:aa:bb:cc","vlan":42,"qos":5,"spoofchk":true,"trust":true,"state":"auto","min_tx_rate":0,"max_tx_rate":500})"
                   "\n");

  // A driver that takes the request and ignores it is caught by the read-back.
  f.net.ignore_trust = true;
  o = f.run({"sriov", "config", "enp3s0f0:vf0", "trust=on"});
  EXPECT_EQ(o.rc, 1);
  EXPECT_EQ(o.err, "VF 0 of enp3s0f0: trust reads back as off after setting on (the driver accepted the request but did not apply it)");
}

TEST(SriovCli, ConfigRefusals) {
  CliFixture f;
  f.fake.set_numvfs(kNvmePf, 1);
  auto o = f.run({"sriov", "config", kNvmeVf1, "mac=52:54:00:00:00:01"});
  EXPECT_EQ(o.rc, 1);
  EXPECT_TRUE(contains(o.err, "VF 0000:01:00.1: its PF 0000:01:00.0 has no network interface")) << o.err;
  o = f.run({"sriov", "config", kNicPf, "vlan=1"});
  EXPECT_EQ(o.rc, 1);
  EXPECT_TRUE(contains(o.err, "not an SR-IOV VF")) << o.err;
  o = f.run({"sriov", "config", "0000:07:00.1"});
  EXPECT_EQ(o.rc, 1);
  EXPECT_TRUE(contains(o.err, "no PCI device 0000:07:00.1")) << o.err;
  EXPECT_EQ(f.net.sets, 0);

  // NETDEV:vfN past the device's sriov_numvfs (as netdevsim exposes it under class/net/X/device).
  auto dev = f.fake.root() / "devices/netdevsim/netdevsim10";
  std::filesystem::create_directories(dev);
  std::ofstream(dev / "sriov_numvfs") << "2\n";
  std::filesystem::create_directories(f.fake.root() / "class/net/eni10np1");
  std::filesystem::create_directory_symlink("../../../devices/netdevsim/netdevsim10",
                                            f.fake.root() / "class/net/eni10np1/device");
  o = f.run({"sriov", "config", "eni10np1:vf2", "trust=on"});
  EXPECT_EQ(o.rc, 1);
  EXPECT_EQ(o.err, "eni10np1:vf2: eni10np1 has 2 VFs enabled (sriov_numvfs): there is no vf2");
  // Within range it reaches the VfNetConfig (which here knows no eni10np1).
  o = f.run({"sriov", "config", "eni10np1:vf1", "trust=on"});
  EXPECT_EQ(o.rc, 1);
  EXPECT_EQ(o.err, "no network interface eni10np1");
}

TEST(SriovCli, JsonQuoteEscapes) {
  EXPECT_EQ(json_quote("a\"b\\c\n\x01"), R"("a\"b\\c\n\u0001")");
  EXPECT_TRUE(JsonCheck::valid(R"({"a":[1,true,null,"x"]})"));
  EXPECT_FALSE(JsonCheck::valid(R"({"a":[1,]})"));
}

}  // namespace
}  // namespace iovirt

namespace iovirt {
namespace {

TEST(SriovVfAssign, LeasesConfiguresPassesThroughAndGivesBack) {
  CliFixture f;
  f.fake.set_numvfs(kNvmePf, 2);
  f.fake.set_numvfs(kNicPf, 2);
  auto p = parse_args({"run", "--kernel", "k", "--vf", std::string("pf=") + kNvmePf, "--vf",
                       std::string("pf=") + kNicPf + ",mac=52:54:00:00:00:09,vlan=7", "--vf",
                       std::string("pf=") + kNvmePf});
  ASSERT_TRUE(p) << p.error().message();
  VmConfig cfg = p->vm;
  // The NIC VF 0 has a MAC already (set by someone before): release must put it back.
  f.net.state[{"enp3s0f0", 0}].mac = std::array<std::uint8_t, 6>{0x02, 0, 0, 0, 0, 0x01};
  auto a = VfAssignments::acquire(cfg, "vm-a", f.env);
  ASSERT_TRUE(a) << a.error().message();
  ASSERT_EQ(cfg.devices.size(), 3u);
  EXPECT_EQ(cfg.devices[0].address, addr(kNvmeVf1));
  EXPECT_EQ(cfg.devices[1].address, addr("0000:03:00.1"));
  EXPECT_EQ(cfg.devices[2].address, addr("0000:01:00.2"));
  EXPECT_EQ(cfg.devices[0].path, (f.fake.root() / "bus/pci/devices/0000:01:00.1").string());
  for (const auto& d : cfg.devices) EXPECT_EQ(f.fake.driver(d.address.to_string()), "vfio-pci");
  const auto& nic = f.net.state[{"enp3s0f0", 0}];
  EXPECT_EQ(sriov::format_mac(*nic.mac), "52:54:00:00:00:09");
  EXPECT_EQ(nic.vlan, 7);

  MetricsRegistry m;
  (*a)->publish_metrics(m);
  const std::string text = m.expose();
  EXPECT_TRUE(contains(text, "iovirt_sriov_vfs_total{pf=\"0000:01:00.0\"} 2")) << text;
  EXPECT_TRUE(contains(text, "iovirt_sriov_vfs_enabled{pf=\"0000:03:00.0\"} 2")) << text;
  EXPECT_TRUE(contains(text, "iovirt_sriov_vfs_leased{pf=\"0000:01:00.0\"} 2")) << text;
  EXPECT_TRUE(contains(text, "iovirt_sriov_vfs_leased{pf=\"0000:03:00.0\"} 1")) << text;

  // The CLI sees the leases; a second VM gets the NIC's other VF, and no NVMe VF is left.
  auto o = f.run({"sriov", "leases"});
  EXPECT_TRUE(contains(o.out, "vm-a")) << o.out;
  VmConfig cfg2;
  cfg2.vfs.push_back({addr(kNvmePf), {}});
  auto b = VfAssignments::acquire(cfg2, "vm-b", f.env);
  ASSERT_FALSE(b);
  EXPECT_TRUE(contains(b.error().message(), "--vf pf=0000:01:00.0: ")) << b.error().message();
  EXPECT_TRUE(contains(b.error().message(), "no free VF on PF 0000:01:00.0")) << b.error().message();

  ASSERT_TRUE((*a)->release());
  EXPECT_EQ(f.fake.driver(kNvmeVf1), "nvme");
  EXPECT_EQ(f.fake.driver("0000:03:00.1"), "igbvf");
  const auto& back = f.net.state[{"enp3s0f0", 0}];
  EXPECT_EQ(sriov::format_mac(*back.mac), "02:00:00:00:00:01");
  EXPECT_EQ(back.vlan, 0);
  EXPECT_GE(f.fake.reset_count(kNvmeVf1), 1);
  o = f.run({"sriov", "leases"});
  EXPECT_TRUE(contains(o.out, "no VF leases")) << o.out;
  EXPECT_TRUE((*a)->release());  // idempotent
}

TEST(SriovVfAssign, FailureGivesBackWhatWasTaken) {
  CliFixture f;
  f.fake.set_numvfs(kNvmePf, 2);
  VmConfig cfg;
  cfg.vfs.push_back({addr(kNvmePf), {}});
  sriov::VfNetSettings mac;
  mac.mac = std::array<std::uint8_t, 6>{0x52, 0x54, 0, 0, 0, 1};
  cfg.vfs.push_back({addr(kNvmePf), mac});  // an NVMe PF has no netdev
  auto a = VfAssignments::acquire(cfg, "vm", f.env);
  ASSERT_FALSE(a);
  EXPECT_EQ(a.error().message(),
            "--vf pf=0000:01:00.0: network settings (mac=52:54:00:00:00:01) need a PF with a "
            "network interface; this one has none");
  EXPECT_EQ(f.fake.driver(kNvmeVf1), "nvme");  // the first VF went back
  auto o = f.run({"sriov", "leases"});
  EXPECT_TRUE(contains(o.out, "no VF leases")) << o.out;

  VmConfig bad;
  bad.vfs.push_back({addr(kEdu), {}});
  auto e = VfAssignments::acquire(bad, "vm", f.env);
  ASSERT_FALSE(e);
  EXPECT_TRUE(contains(e.error().message(), "--vf pf=0000:02:00.0: ")) << e.error().message();
  EXPECT_TRUE(contains(e.error().message(), "not SR-IOV capable")) << e.error().message();
}

}  // namespace
}  // namespace iovirt

namespace iovirt {
namespace {

TEST(SriovVfAssign, ReclaimAfterADeadHolderRestoresItsNetworkSettings) {
  CliFixture f;
  f.fake.set_numvfs(kNicPf, 1);
  {
    // A holder that recorded what to restore, changed the MAC, and died (lease dropped without
    // release: the lock is gone, the file stays, as after SIGKILL).
    sriov::Sriov s(Sysfs(f.fake.root()), f.env.options);
    sriov::VfPool pool(s, f.env.lease_dir());
    auto lease = pool.allocate(addr(kNicPf), "crashed");
    ASSERT_TRUE(lease) << lease.error().message();
    sriov::LeaseRecord rec = lease->record();
    rec.net_dev = "enp3s0f0";
    rec.net_index = 0;
    rec.net_restore = "mac=02:00:00:00:00:01,vlan=0,qos=0";
    ASSERT_TRUE(pool.update(*lease, rec));
    auto back = sriov::LeaseRecord::parse(rec.serialize());
    ASSERT_TRUE(back);
    EXPECT_EQ(back->net_dev, "enp3s0f0");
    EXPECT_EQ(back->net_restore, rec.net_restore);
    f.net.state[{"enp3s0f0", 0}].mac = std::array<std::uint8_t, 6>{0x52, 0x54, 0, 0, 0, 0x66};
    f.net.state[{"enp3s0f0", 0}].vlan = 9;
  }
  VmConfig cfg;
  cfg.vfs.push_back({addr(kNicPf), {}});
  auto a = VfAssignments::acquire(cfg, "heir", f.env);
  ASSERT_TRUE(a) << a.error().message();
  ASSERT_EQ(cfg.devices.size(), 1u);
  EXPECT_EQ(cfg.devices[0].address, addr("0000:03:00.1"));
  const auto& st = f.net.state[{"enp3s0f0", 0}];
  EXPECT_EQ(sriov::format_mac(*st.mac), "02:00:00:00:00:01");
  EXPECT_EQ(st.vlan, 0);
  auto o = f.run({"sriov", "leases", "--json"});
  EXPECT_TRUE(contains(o.out, R"("vm":"heir")")) << o.out;
  EXPECT_FALSE(contains(o.out, "crashed")) << o.out;
}

}  // namespace
}  // namespace iovirt
