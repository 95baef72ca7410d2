#include "iovirt/vfio/interrupt_report.hpp"

#include <charconv>
#include <limits>
#include <vector>

namespace iovirt::vfio {

namespace {

// Kernel bool module parameters read "Y"/"N"; int ones "1"/"0".
Tri param(const Sysfs& sysfs, const std::filesystem::path& p) {
  auto v = sysfs.read(p, 64);
  if (!v) return Tri::Unknown;
  if (*v == "Y" || *v == "y" || *v == "1") return Tri::Yes;
  if (*v == "N" || *v == "n" || *v == "0") return Tri::No;
  return Tri::Unknown;
}

// A hex register dump; AMD's "features" attribute may be "efr:efr2" (the first part is the EFR).
bool parse_hex_reg(std::string_view s, uint64_t& out) {
  if (auto colon = s.find(':'); colon != std::string_view::npos) s = s.substr(0, colon);
  if (s.size() >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) s.remove_prefix(2);
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out, 16);
  return ec == std::errc() && p == s.data() + s.size();
}

Tri all_units(const std::vector<Tri>& v) {
  if (v.empty()) return Tri::Unknown;
  bool unknown = false;
  for (Tri t : v) {
    if (t == Tri::No) return Tri::No;
    if (t == Tri::Unknown) unknown = true;
  }
  return unknown ? Tri::Unknown : Tri::Yes;
}

constexpr unsigned kVtdCapPi = 59;   // VT-d Capability Register: Posted Interrupts Support
constexpr unsigned kVtdEcapIr = 3;   // VT-d Extended Capability Register: Interrupt Remapping
constexpr unsigned kAmdEfrGa = 7;    // AMD IOMMU Extended Feature Register: GASup

bool bit(uint64_t v, unsigned b) {
  return ((v >> b) & 1U) != 0;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

}  // namespace

std::string_view to_string(Tri t) {
  switch (t) {
    case Tri::Yes:
      return "yes";
    case Tri::No:
      return "no";
    case Tri::Unknown:
      break;
  }
  return "unknown";
}

PostedInterruptSupport detect_posted_interrupts(const Sysfs& sysfs) {
  PostedInterruptSupport out;
  const auto mod = sysfs.root() / "module";
  if (sysfs.exists(mod / "kvm_intel")) {
    out.cpu_vendor = "intel";
    out.cpu_posting = param(sysfs, mod / "kvm_intel/parameters/enable_apicv");
  } else if (sysfs.exists(mod / "kvm_amd")) {
    out.cpu_vendor = "amd";
    out.cpu_posting = param(sysfs, mod / "kvm_amd/parameters/avic");
  } else {
    out.cpu_vendor = "unknown";
  }

  std::vector<Tri> remap, post;
  auto units = sysfs.list(sysfs.root() / "class/iommu");
  if (units) {
    for (const auto& u : *units) {
      const auto dir = sysfs.root() / "class/iommu" / u;
      if (sysfs.exists(dir / "intel-iommu")) {
        uint64_t cap = 0, ecap = 0;
        auto c = sysfs.read(dir / "intel-iommu/cap", 64);
        auto e = sysfs.read(dir / "intel-iommu/ecap", 64);
        const bool cap_ok = c && parse_hex_reg(*c, cap);
        const bool ecap_ok = e && parse_hex_reg(*e, ecap);
        remap.push_back(ecap_ok ? (bit(ecap, kVtdEcapIr) ? Tri::Yes : Tri::No) : Tri::Unknown);
        post.push_back(cap_ok ? (bit(cap, kVtdCapPi) ? Tri::Yes : Tri::No) : Tri::Unknown);
      } else if (sysfs.exists(dir / "amd-iommu")) {
        uint64_t efr = 0;
        auto f = sysfs.read(dir / "amd-iommu/features", 128);
        const bool ok = f && parse_hex_reg(*f, efr);
        // Every AMD-Vi unit remaps interrupts; posting (guest vAPIC mode) needs GASup.
        remap.push_back(Tri::Yes);
        post.push_back(ok ? (bit(efr, kAmdEfrGa) ? Tri::Yes : Tri::No) : Tri::Unknown);
      }
    }
  }
  out.iommu_remapping = all_units(remap);
  out.iommu_posting = all_units(post);

  std::string s = "posted interrupts: CPU ";
  s += out.cpu_vendor == "amd" ? "AVIC " : (out.cpu_vendor == "intel" ? "APICv " : "APICv/AVIC ");
  s += to_string(out.cpu_posting);
  s += ", IOMMU interrupt remapping ";
  s += to_string(out.iommu_remapping);
  s += ", IOMMU posting ";
  s += out.iommu_posting == Tri::Yes ? "capable" : std::string(to_string(out.iommu_posting));
  if (out.cpu_posting == Tri::Yes && out.iommu_posting == Tri::Yes) {
    s += ": device interrupts can bypass the host (if the kernel did not disable posting)";
  } else if (out.cpu_posting == Tri::No || out.iommu_posting == Tri::No) {
    s += ": device interrupts go through a host vector and KVM injection";
  } else {
    s += ": delivery path unknown (check the host vector counts)";
  }
  out.summary = std::move(s);
  return out;
}

Result<std::map<std::string, uint64_t>> host_vector_interrupts(std::string_view text,
                                                               std::string_view bdf) {
  std::map<std::string, uint64_t> out;
  size_t ncpus = 0;
  bool header = false;
  std::string suffix = "(";
  suffix += bdf;
  suffix += ')';
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = text.substr(pos, nl - pos);
    pos = nl + 1;
    if (!header) {
      // "           CPU0       CPU1 ..."
      std::string_view l = trim(line);
      if (l.empty()) continue;
      while (!l.empty()) {
        size_t sp = l.find_first_of(" \t");
        std::string_view tok = l.substr(0, sp);
        if (tok.substr(0, 3) != "CPU") {
          return fail("/proc/interrupts: header token '" + std::string(tok.substr(0, 32)) +
                          "' is not CPUn",
                      EINVAL);
        }
        ++ncpus;
        l = sp == std::string_view::npos ? std::string_view{} : trim(l.substr(sp));
      }
      header = true;
      continue;
    }
    std::string_view l = trim(line);
    // The name is the last token; only lines naming our vectors matter.
    size_t last_sp = l.find_last_of(" \t");
    if (last_sp == std::string_view::npos) continue;
    std::string_view name = l.substr(last_sp + 1);
    if (name.substr(0, 5) != "vfio-" || name.size() <= suffix.size() ||
        name.substr(name.size() - suffix.size()) != suffix) {
      continue;
    }
    size_t colon = l.find(':');
    if (colon == std::string_view::npos) continue;
    std::string_view rest = trim(l.substr(colon + 1));
    uint64_t sum = 0;
    for (size_t c = 0; c < ncpus && !rest.empty(); ++c) {
      size_t sp = rest.find_first_of(" \t");
      std::string_view tok = rest.substr(0, sp);
      uint64_t v = 0;
      auto [p, ec] = std::from_chars(tok.data(), tok.data() + tok.size(), v);
      if (ec != std::errc() || p != tok.data() + tok.size()) break;
      sum = v > std::numeric_limits<uint64_t>::max() - sum ? std::numeric_limits<uint64_t>::max()
                                                           : sum + v;
      rest = sp == std::string_view::npos ? std::string_view{} : trim(rest.substr(sp));
    }
    std::string key(name.substr(0, name.size() - suffix.size()));
    uint64_t& slot = out[key];
    slot = sum > std::numeric_limits<uint64_t>::max() - slot ? std::numeric_limits<uint64_t>::max()
                                                             : slot + sum;
  }
  if (!header) return fail("/proc/interrupts: no CPU header line", EINVAL);
  return out;
}

}  // namespace iovirt::vfio
