#include "iovirt/vmm/sriov_cli.hpp"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "iovirt/sriov/pool.hpp"

namespace iovirt {

using sriov::LeaseStatus;
using sriov::PfInfo;
using sriov::VfInfo;
using sriov::VfNetSettings;

SriovCliEnv SriovCliEnv::from_environment() {
  SriovCliEnv env;
  if (const char* r = std::getenv("IOVIRT_SYSFS_ROOT"); r != nullptr && *r != '\0') env.sysfs_root = r;
  if (const char* r = std::getenv("IOVIRT_RUN_DIR"); r != nullptr && *r != '\0') env.run_dir = r;
  return env;
}

std::string json_quote(std::string_view s) {
  std::string o = "\"";
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\r': o += "\\r"; break;
      case '\t': o += "\\t"; break;
      default:
        if (u < 0x20) {
          char b[8];
          std::snprintf(b, sizeof b, "\\u%04x", u);
          o += b;
        } else {
          o += c;
        }
    }
  }
  o += '"';
  return o;
}

namespace {

std::string jopt(const std::optional<std::string>& s) { return s ? json_quote(*s) : "null"; }
template <class T>
std::string jnum(const std::optional<T>& v) {
  return v ? std::to_string(*v) : "null";
}
std::string jbool(const std::optional<bool>& b) { return b ? (*b ? "true" : "false") : "null"; }

std::string hex4(std::uint16_t v) {
  char b[8];
  std::snprintf(b, sizeof b, "%04x", v);
  return b;
}

std::string utc(std::int64_t t) {
  if (t <= 0) return "-";
  std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return b;
}

// Left-aligned columns sized to their widest cell.
class Table {
 public:
  explicit Table(std::vector<std::string> head, std::string indent = "") : indent_(std::move(indent)) {
    rows_.push_back(std::move(head));
  }
  void row(std::vector<std::string> r) { rows_.push_back(std::move(r)); }
  void print(std::string& out) const {
    std::vector<std::size_t> w(rows_[0].size(), 0);
    for (const auto& r : rows_)
      for (std::size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], r[i].size());
    for (const auto& r : rows_) {
      std::string line = indent_;
      for (std::size_t i = 0; i < r.size(); ++i) {
        line += r[i];
        if (i + 1 < r.size()) line.append(w[i] - r[i].size() + 2, ' ');
      }
      out += line;
      out += '\n';
    }
  }

 private:
  std::string indent_;
  std::vector<std::vector<std::string>> rows_;
};

class Cli {
 public:
  Cli(const SriovCliEnv& env, std::string& out)
      : env_(env), out_(out), sriov_(Sysfs(env.sysfs_root), env.options), pool_(sriov_, env.lease_dir()) {}

  Status run(const SriovArgs& a) {
    switch (a.command) {
      case SriovCommand::List: return list(a.json);
      case SriovCommand::Leases: return leases(a.json);
      case SriovCommand::Enable: return enable(a.device, a.count, a.json);
      case SriovCommand::Disable: return disable(a.device, a.json);
      case SriovCommand::Bind: return bind(a.device, a.to_vfio, a.json);
      case SriovCommand::Config: return config(a.target, a.settings, a.json);
    }
    return fail("unknown sriov command");
  }

 private:
  Result<std::map<PciAddress, LeaseStatus>> lease_map() const {
    auto ls = pool_.list_leases();
    if (!ls) return std::unexpected(ls.error());
    std::map<PciAddress, LeaseStatus> m;
    for (auto& l : *ls)
      if (l.record.vf) m.emplace(*l.record.vf, std::move(l));
    return m;
  }

  static std::string lease_text(const LeaseStatus* l) {
    if (l == nullptr) return "-";
    std::string s = l->alive ? "" : "stale: ";
    s += l->record.vm.empty() ? std::string("?") : l->record.vm;
    s += " (pid ";
    s += std::to_string(l->record.pid);
    s += ')';
    return s;
  }
  static std::string lease_json(const LeaseStatus* l) {
    if (l == nullptr) return "null";
    std::string s = "{\"vm\":" + json_quote(l->record.vm);
    s += ",\"pid\":" + std::to_string(l->record.pid);
    s += ",\"alive\":";
    s += l->alive ? "true" : "false";
    s += ",\"since\":" + json_quote(utc(l->record.since));
    s += '}';
    return s;
  }

  static std::string pf_json(const PfInfo& p, const std::map<PciAddress, LeaseStatus>& leases) {
    std::string s = "{\"address\":" + json_quote(p.address.to_string());
    s += ",\"vendor\":" + json_quote(hex4(p.vendor));
    s += ",\"device\":" + json_quote(hex4(p.device));
    s += ",\"driver\":" + jopt(p.driver);
    s += ",\"netdevs\":[";
    for (std::size_t i = 0; i < p.netdevs.size(); ++i) {
      if (i) s += ',';
      s += json_quote(p.netdevs[i]);
    }
    s += "],\"total_vfs\":" + std::to_string(p.total_vfs);
    s += ",\"num_vfs\":" + std::to_string(p.num_vfs);
    s += ",\"drivers_autoprobe\":";
    s += p.drivers_autoprobe ? "true" : "false";
    unsigned leased = 0;
    std::string vfs;
    for (const auto& v : p.vfs) {
      auto it = leases.find(v.address);
      const LeaseStatus* l = it == leases.end() ? nullptr : &it->second;
      if (l != nullptr && l->alive) ++leased;
      if (!vfs.empty()) vfs += ',';
      vfs += "{\"index\":" + std::to_string(v.index);
      vfs += ",\"address\":" + json_quote(v.address.to_string());
      vfs += ",\"driver\":" + jopt(v.driver);
      vfs += ",\"iommu_group\":" + jnum(v.iommu_group);
      vfs += ",\"lease\":" + lease_json(l);
      vfs += '}';
    }
    s += ",\"leased_vfs\":" + std::to_string(leased);
    s += ",\"vfs\":[" + vfs + "]}";
    return s;
  }

  void pf_table(const PfInfo& p, const std::map<PciAddress, LeaseStatus>& leases) {
    std::string nets;
    for (const auto& n : p.netdevs) {
      if (!nets.empty()) nets += ',';
      nets += n;
    }
    out_ += "PF " + p.address.to_string() + "  " + hex4(p.vendor) + ":" + hex4(p.device);
    out_ += "  driver " + p.driver.value_or("-");
    out_ += "  netdev " + (nets.empty() ? std::string("-") : nets);
    out_ += "  VFs " + std::to_string(p.num_vfs) + "/" + std::to_string(p.total_vfs);
    out_ += "  autoprobe ";
    out_ += p.drivers_autoprobe ? "on" : "off";
    out_ += '\n';
    if (p.vfs.empty()) {
      out_ += "  (no VFs enabled: iovirt sriov enable " + p.address.to_string() + " N)\n";
      return;
    }
    Table t({"VF", "ADDRESS", "DRIVER", "IOMMU", "LEASE"}, "  ");
    for (const auto& v : p.vfs) {
      auto it = leases.find(v.address);
      t.row({std::to_string(v.index), v.address.to_string(), v.driver.value_or("-"),
             v.iommu_group ? std::to_string(*v.iommu_group) : "-",
             lease_text(it == leases.end() ? nullptr : &it->second)});
    }
    t.print(out_);
  }

  Status list(bool json) {
    auto pfs = sriov_.discover_pfs();
    if (!pfs) return std::unexpected(pfs.error());
    auto leases = lease_map();
    if (!leases) return std::unexpected(leases.error());
    if (json) {
      out_ += "{\"pfs\":[";
      for (std::size_t i = 0; i < pfs->size(); ++i) {
        if (i) out_ += ',';
        out_ += pf_json((*pfs)[i], *leases);
      }
      out_ += "]}\n";
      return {};
    }
    if (pfs->empty()) {
      out_ += "no SR-IOV capable PCI devices under " + env_.sysfs_root.string() + "\n";
      return {};
    }
    for (const auto& p : *pfs) pf_table(p, *leases);
    return {};
  }

  Status leases(bool json) {
    auto ls = pool_.list_leases();
    if (!ls) return std::unexpected(ls.error());
    if (json) {
      out_ += "{\"lease_dir\":" + json_quote(pool_.dir().string()) + ",\"leases\":[";
      for (std::size_t i = 0; i < ls->size(); ++i) {
        const auto& l = (*ls)[i];
        if (i) out_ += ',';
        out_ += "{\"vf\":" + (l.record.vf ? json_quote(l.record.vf->to_string()) : "null");
        out_ += ",\"pf\":" + (l.record.pf ? json_quote(l.record.pf->to_string()) : "null");
        out_ += ",\"vm\":" + json_quote(l.record.vm);
        out_ += ",\"pid\":" + std::to_string(l.record.pid);
        out_ += ",\"alive\":";
        out_ += l.alive ? "true" : "false";
        out_ += ",\"since\":" + json_quote(utc(l.record.since));
        out_ += ",\"restore_driver\":" + jopt(l.record.restore_driver);
        out_ += ",\"file\":" + json_quote(l.file.string()) + "}";
      }
      out_ += "]}\n";
      return {};
    }
    if (ls->empty()) {
      out_ += "no VF leases in " + pool_.dir().string() + "\n";
      return {};
    }
    Table t({"VF", "PF", "VM", "PID", "STATE", "SINCE", "RESTORE"});
    for (const auto& l : *ls) {
      t.row({l.record.vf ? l.record.vf->to_string() : l.file.filename().string(),
             l.record.pf ? l.record.pf->to_string() : "-", l.record.vm.empty() ? "-" : l.record.vm,
             std::to_string(l.record.pid), l.alive ? "held" : "stale (reclaimed on next allocation)",
             utc(l.record.since), l.record.restore_driver.value_or("-")});
    }
    t.print(out_);
    return {};
  }

  // Refuses to touch VFs a live iovirt holds: their VM is using them.
  Status check_not_leased(const std::vector<VfInfo>& vfs, const std::string& action) const {
    auto leases = lease_map();
    if (!leases) return std::unexpected(leases.error());
    for (const auto& v : vfs) {
      auto it = leases->find(v.address);
      if (it != leases->end() && it->second.alive)
        return fail(action + ": VF " + v.address.to_string() + " is leased to VM '" +
                        it->second.record.vm + "' (pid " + std::to_string(it->second.record.pid) +
                        "): stop that VM first (see iovirt sriov leases)");
    }
    return {};
  }

  Status print_pf(const PciAddress& pf, bool json, const std::string& what) {
    auto p = sriov_.pf(pf);
    if (!p) return std::unexpected(p.error());
    auto leases = lease_map();
    if (!leases) return std::unexpected(leases.error());
    if (json) {
      out_ += pf_json(*p, *leases);
      out_ += '\n';
    } else {
      out_ += what;
      out_ += '\n';
      pf_table(*p, *leases);
    }
    return {};
  }

  Status enable(const PciAddress& pf, unsigned n, bool json) {
    auto p = sriov_.pf(pf);
    if (!p) return std::unexpected(p.error());
    if (n > p->total_vfs)
      return fail("enable " + std::to_string(n) + " VFs on PF " + pf.to_string() +
                      ": the PF supports at most " + std::to_string(p->total_vfs) + " (sriov_totalvfs)");
    if (p->num_vfs != n) {
      // A change of count destroys the current VFs (the kernel goes through 0).
      if (auto s = check_not_leased(p->vfs, "enable " + std::to_string(n) + " VFs on PF " + pf.to_string()); !s)
        return s;
      // An NVMe PF with flexible resources needs virtualization management for its VFs to work.
      auto ctrl = sriov::nvme_ctrl_of(sriov_, pf);
      if (!ctrl) return std::unexpected(ctrl.error());
      if (*ctrl) {
        const std::string c = **ctrl;
        auto open = [&]() -> Result<std::unique_ptr<sriov::NvmeAdmin>> {
          if (env_.nvme_open) return env_.nvme_open(c);
          return sriov::open_nvme_admin("/dev/" + c);
        };
        if (auto s = sriov::nvme_enable_vfs(sriov_, pf, n, open); !s) return s;
      } else if (auto s = sriov_.enable(pf, n); !s) {
        return s;
      }
    }
    return print_pf(pf, json, "PF " + pf.to_string() + ": " + std::to_string(n) + " VFs enabled");
  }

  Status disable(const PciAddress& pf, bool json) {
    auto p = sriov_.pf(pf);
    if (!p) return std::unexpected(p.error());
    if (auto s = check_not_leased(p->vfs, "disable the VFs of PF " + pf.to_string()); !s) return s;
    if (p->num_vfs != 0) {
      if (auto s = sriov_.disable(pf); !s) return s;
    }
    return print_pf(pf, json, "PF " + pf.to_string() + ": VFs disabled");
  }

  Status bind(const PciAddress& vf, bool to_vfio, bool json) {
    PciAddress pf;
    auto v = sriov_.vf(vf, &pf);
    if (!v) return std::unexpected(v.error());
    const std::string target = to_vfio ? std::string(sriov::kVfioPci) : "host";
    if (auto s = check_not_leased({*v}, "bind VF " + vf.to_string() + " to " + target); !s) return s;
    std::optional<std::string> before = v->driver;
    if (to_vfio) {
      if (v->driver != std::string(sriov::kVfioPci)) {
        auto prev = sriov_.bind(vf, sriov::kVfioPci);
        if (!prev) return std::unexpected(prev.error());
      }
    } else {
      if (auto s = sriov_.restore(vf, std::nullopt); !s) return s;
    }
    auto after = sriov_.driver_of(vf);
    if (!after) return std::unexpected(after.error());
    if (json) {
      out_ += "{\"vf\":" + json_quote(vf.to_string()) + ",\"pf\":" + json_quote(pf.to_string()) +
              ",\"previous_driver\":" + jopt(before) + ",\"driver\":" + jopt(*after) + "}\n";
    } else {
      out_ += "VF " + vf.to_string() + ": " + before.value_or("(unbound)") + " -> " +
              after->value_or("(unbound: no host driver matched)") + "\n";
    }
    return {};
  }

  // Where a config target lives: the PF's netdev and the VF's index.
  struct Resolved {
    std::string netdev;
    unsigned index = 0;
    std::optional<PciAddress> pci;
  };
  Result<Resolved> resolve(const sriov::VfTarget& t) const {
    Resolved r;
    if (t.pci) {
      PciAddress pf;
      auto v = sriov_.vf(*t.pci, &pf);
      if (!v) return std::unexpected(v.error());
      auto p = sriov_.pf(pf);
      if (!p) return std::unexpected(p.error());
      if (p->netdevs.empty())
        return fail("VF " + t.pci->to_string() + ": its PF " + pf.to_string() +
                        " has no network interface (not a NIC, or its driver is not bound): VF "
                        "network settings are set through the PF's netdev");
      r.netdev = p->netdevs.front();
      r.index = v->index;
      r.pci = t.pci;
      return r;
    }
    r.netdev = t.netdev;
    r.index = t.index;
    // The netdev's device (a PCI PF or a netdevsim device) says how many VFs exist; the
    // kernel's own answer for a VF past that is a bare EINVAL, so check first when we can.
    const Sysfs fs(env_.sysfs_root);
    const auto numvfs = env_.sysfs_root / "class/net" / t.netdev / "device/sriov_numvfs";
    if (fs.exists(numvfs)) {
      auto n = fs.read_uint(numvfs);
      if (n && t.index >= *n)
        return fail(t.to_string() + ": " + t.netdev + " has " + std::to_string(*n) +
                        " VFs enabled (sriov_numvfs): there is no vf" + std::to_string(t.index));
    }
    return r;
  }

  Status config(const sriov::VfTarget& t, const VfNetSettings& want, bool json) {
    auto r = resolve(t);
    if (!r) return std::unexpected(r.error());
    std::unique_ptr<sriov::VfNetConfig> own;
    sriov::VfNetConfig* net = env_.net;
    if (net == nullptr) {
      own = sriov::netlink_vf_config();
      net = own.get();
    }
    Result<VfNetSettings> got = want.empty() ? net->get(r->netdev, r->index)
                                             : sriov::apply_vf_settings(*net, r->netdev, r->index, want);
    if (!got) return std::unexpected(got.error());
    const auto& g = *got;
    if (json) {
      out_ += "{\"vf\":" + json_quote(t.to_string());
      out_ += ",\"pf_netdev\":" + json_quote(r->netdev);
      out_ += ",\"index\":" + std::to_string(r->index);
      out_ += ",\"pci\":" + (r->pci ? json_quote(r->pci->to_string()) : "null");
      out_ += ",\"mac\":" + (g.mac ? json_quote(sriov::format_mac(*g.mac)) : "null");
      out_ += ",\"vlan\":" + jnum(g.vlan);
      out_ += ",\"qos\":" + jnum(g.qos);
      out_ += ",\"spoofchk\":" + jbool(g.spoofchk);
      out_ += ",\"trust\":" + jbool(g.trust);
      out_ += ",\"state\":" +
              (g.link_state ? json_quote(sriov::link_state_name(*g.link_state)) : "null");
      out_ += ",\"min_tx_rate\":" + jnum(g.min_tx_rate);
      out_ += ",\"max_tx_rate\":" + jnum(g.max_tx_rate);
      out_ += "}\n";
      return {};
    }
    out_ += "VF " + std::to_string(r->index) + " of " + r->netdev;
    if (r->pci) out_ += " (" + r->pci->to_string() + ")";
    out_ += want.empty() ? "\n" : ": set and verified\n";
    auto opt = [](const auto& o, auto f) -> std::string { return o ? f(*o) : std::string("-"); };
    auto num = [](auto v) { return std::to_string(v); };
    auto onoff = [](bool b) { return std::string(b ? "on" : "off"); };
    Table tab({"SETTING", "VALUE"}, "  ");
    tab.row({"mac", opt(g.mac, sriov::format_mac)});
    tab.row({"vlan", opt(g.vlan, num)});
    tab.row({"qos", opt(g.qos, num)});
    tab.row({"spoofchk", opt(g.spoofchk, onoff)});
    tab.row({"trust", opt(g.trust, onoff)});
    tab.row({"state", opt(g.link_state, [](sriov::VfLinkState s) { return std::string(sriov::link_state_name(s)); })});
    tab.row({"min_tx_rate", opt(g.min_tx_rate, num)});
    tab.row({"max_tx_rate", opt(g.max_tx_rate, num)});
    tab.print(out_);
    return {};
  }

  const SriovCliEnv& env_;
  std::string& out_;
  sriov::Sriov sriov_;
  sriov::VfPool pool_;
};

}  // namespace

int run_sriov(const SriovArgs& args, const SriovCliEnv& env, std::string& out, std::string& err) {
  Cli cli(env, out);
  auto s = cli.run(args);
  if (!s) {
    err = s.error().message();
    return 1;
  }
  return 0;
}

}  // namespace iovirt
