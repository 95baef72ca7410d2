#include "iovirt/sriov/vf_net.hpp"

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <vector>

namespace iovirt::sriov {

bool VfNetSettings::empty() const { return *this == VfNetSettings{}; }

std::string format_mac(const std::array<std::uint8_t, 6>& mac) {
  char b[18];
  std::snprintf(b, sizeof b, "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3],
                mac[4], mac[5]);
  return b;
}

Result<std::array<std::uint8_t, 6>> parse_mac(std::string_view v) {
  std::array<std::uint8_t, 6> mac{};
  auto bad = [&] {
    return fail("mac='" + std::string(v) + "' is not six hex bytes like 52:54:00:12:34:56", EINVAL);
  };
  if (v.size() != 17) return bad();
  for (std::size_t i = 0; i < 6; ++i) {
    if (i > 0 && v[3 * i - 1] != ':') return bad();
    unsigned byte = 0;
    auto [p, ec] = std::from_chars(v.data() + 3 * i, v.data() + 3 * i + 2, byte, 16);
    if (ec != std::errc() || p != v.data() + 3 * i + 2) return bad();
    mac[i] = static_cast<std::uint8_t>(byte);
  }
  // All-zero is accepted: it is how a VF's MAC is cleared (the VF driver then picks one).
  if (mac[0] & 1) return fail("mac='" + std::string(v) + "' is a multicast address (first byte odd)", EINVAL);
  return mac;
}

std::string_view link_state_name(VfLinkState s) {
  switch (s) {
    case VfLinkState::Auto: return "auto";
    case VfLinkState::Enable: return "enable";
    case VfLinkState::Disable: return "disable";
  }
  return "?";
}

namespace {

Result<std::uint32_t> parse_uint(std::string_view key, std::string_view v, std::uint32_t max) {
  std::uint32_t n = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (v.empty() || ec != std::errc() || p != v.data() + v.size() || n > max)
    return fail(std::string(key) + "='" + std::string(v) + "' is not a number in 0.." +
                    std::to_string(max),
                EINVAL);
  return n;
}

Result<bool> parse_onoff(std::string_view key, std::string_view v) {
  if (v == "on") return true;
  if (v == "off") return false;
  return fail(std::string(key) + "='" + std::string(v) + "' is not on or off", EINVAL);
}

}  // namespace

Result<VfNetSettings> parse_vf_settings(std::string_view text) {
  VfNetSettings s;
  if (text.empty()) return s;
  std::vector<std::string> seen;
  std::size_t pos = 0;
  while (pos <= text.size()) {
    std::size_t comma = text.find(',', pos);
    if (comma == std::string_view::npos) comma = text.size();
    std::string_view item = text.substr(pos, comma - pos);
    pos = comma + 1;
    auto eq = item.find('=');
    if (eq == std::string_view::npos || eq == 0)
      return fail("'" + std::string(item) + "' is not KEY=VALUE (e.g. mac=52:54:00:12:34:56,vlan=100)",
                  EINVAL);
    std::string key(item.substr(0, eq));
    std::string_view v = item.substr(eq + 1);
    for (const auto& k : seen)
      if (k == key) return fail("'" + key + "' given twice", EINVAL);
    seen.push_back(key);
    if (key == "mac") {
      auto m = parse_mac(v);
      if (!m) return std::unexpected(m.error());
      s.mac = *m;
    } else if (key == "vlan") {
      auto n = parse_uint(key, v, 4094);
      if (!n) return std::unexpected(n.error());
      s.vlan = static_cast<std::uint16_t>(*n);
    } else if (key == "qos") {
      auto n = parse_uint(key, v, 7);
      if (!n) return std::unexpected(n.error());
      s.qos = static_cast<std::uint8_t>(*n);
    } else if (key == "spoofchk" || key == "trust") {
      auto b = parse_onoff(key, v);
      if (!b) return std::unexpected(b.error());
      (key == "trust" ? s.trust : s.spoofchk) = *b;
    } else if (key == "state") {
      if (v == "auto") s.link_state = VfLinkState::Auto;
      else if (v == "enable") s.link_state = VfLinkState::Enable;
      else if (v == "disable") s.link_state = VfLinkState::Disable;
      else return fail("state='" + std::string(v) + "' is not auto, enable or disable", EINVAL);
    } else if (key == "min_tx_rate" || key == "max_tx_rate") {
      auto n = parse_uint(key, v, UINT32_MAX);
      if (!n) return std::unexpected(n.error());
      (key == "min_tx_rate" ? s.min_tx_rate : s.max_tx_rate) = *n;
    } else {
      return fail("unknown VF setting '" + key +
                      "' (mac, vlan, qos, spoofchk, trust, state, min_tx_rate, max_tx_rate)",
                  EINVAL);
    }
  }
  // The kernel sets VLAN and QoS in one attribute: QoS alone would silently clear the VLAN.
  if (s.qos && !s.vlan) return fail("qos= needs vlan= (they are set together)", EINVAL);
  if (s.qos && *s.qos != 0 && s.vlan && *s.vlan == 0)
    return fail("qos=" + std::to_string(*s.qos) + " needs a VLAN (vlan=1..4094)", EINVAL);
  if (s.min_tx_rate && s.max_tx_rate && *s.max_tx_rate != 0 && *s.min_tx_rate > *s.max_tx_rate)
    return fail("min_tx_rate=" + std::to_string(*s.min_tx_rate) + " is above max_tx_rate=" +
                    std::to_string(*s.max_tx_rate),
                EINVAL);
  return s;
}

std::string format_vf_settings(const VfNetSettings& s) {
  std::string out;
  auto add = [&](std::string_view k, const std::string& v) {
    if (!out.empty()) out += ',';
    out += k;
    out += '=';
    out += v;
  };
  if (s.mac) add("mac", format_mac(*s.mac));
  if (s.vlan) add("vlan", std::to_string(*s.vlan));
  if (s.qos) add("qos", std::to_string(*s.qos));
  if (s.spoofchk) add("spoofchk", *s.spoofchk ? "on" : "off");
  if (s.trust) add("trust", *s.trust ? "on" : "off");
  if (s.link_state) add("state", std::string(link_state_name(*s.link_state)));
  if (s.min_tx_rate) add("min_tx_rate", std::to_string(*s.min_tx_rate));
  if (s.max_tx_rate) add("max_tx_rate", std::to_string(*s.max_tx_rate));
  return out;
}

std::string VfTarget::to_string() const {
  if (pci) return pci->to_string();
  std::string s = netdev;
  s += ":vf";
  s += std::to_string(index);
  return s;
}

Result<VfTarget> parse_vf_target(std::string_view text) {
  VfTarget t;
  if (auto a = PciAddress::parse(text)) {
    t.pci = *a;
    return t;
  }
  auto bad = [&] {
    return fail("'" + std::string(text) +
                    "' is neither a VF's PCI address (DDDD:BB:DD.F) nor PF-NETDEV:vfN (e.g. eth0:vf0)",
                EINVAL);
  };
  auto at = text.rfind(":vf");
  if (at == std::string_view::npos || at == 0) return bad();
  std::string_view dev = text.substr(0, at);
  std::string_view idx = text.substr(at + 3);
  // IFNAMSIZ is 16 including the NUL; '/' and whitespace cannot be in an interface name.
  if (dev.size() > 15 || dev.find_first_of("/ \t\n") != std::string_view::npos) return bad();
  unsigned n = 0;
  auto [p, ec] = std::from_chars(idx.data(), idx.data() + idx.size(), n);
  if (idx.empty() || ec != std::errc() || p != idx.data() + idx.size() || n > 65535) return bad();
  t.netdev = std::string(dev);
  t.index = n;
  return t;
}

Result<VfNetSettings> apply_vf_settings(VfNetConfig& cfg, const std::string& pf_netdev, unsigned vf,
                                        const VfNetSettings& want) {
  const std::string who = "VF " + std::to_string(vf) + " of " + pf_netdev;
  if (auto s = cfg.set(pf_netdev, vf, want); !s) return std::unexpected(s.error());
  auto got = cfg.get(pf_netdev, vf);
  if (!got) return std::unexpected(got.error());
  auto mismatch = [&](std::string_view field, const std::string& asked, const std::string& seen) {
    return fail(who + ": " + std::string(field) + " reads back as " + seen + " after setting " +
                    asked + " (the driver accepted the request but did not apply it)");
  };
  auto show = [](const auto& opt, auto fmt) -> std::string {
    return opt ? fmt(*opt) : std::string("(not reported)");
  };
  auto num = [](auto v) { return std::to_string(v); };
  auto onoff = [](bool b) { return std::string(b ? "on" : "off"); };
  if (want.mac && got->mac != want.mac)
    return mismatch("mac", format_mac(*want.mac), show(got->mac, format_mac));
  if (want.vlan && got->vlan != want.vlan)
    return mismatch("vlan", num(*want.vlan), show(got->vlan, num));
  if (want.qos && got->qos != want.qos) return mismatch("qos", num(*want.qos), show(got->qos, num));
  if (want.spoofchk && got->spoofchk != want.spoofchk)
    return mismatch("spoofchk", onoff(*want.spoofchk), show(got->spoofchk, onoff));
  if (want.trust && got->trust != want.trust)
    return mismatch("trust", onoff(*want.trust), show(got->trust, onoff));
  if (want.link_state && got->link_state != want.link_state)
    return mismatch("state", std::string(link_state_name(*want.link_state)),
                    show(got->link_state, [](VfLinkState s) { return std::string(link_state_name(s)); }));
  if (want.min_tx_rate && got->min_tx_rate != want.min_tx_rate)
    return mismatch("min_tx_rate", num(*want.min_tx_rate), show(got->min_tx_rate, num));
  if (want.max_tx_rate && got->max_tx_rate != want.max_tx_rate)
    return mismatch("max_tx_rate", num(*want.max_tx_rate), show(got->max_tx_rate, num));
  return *got;
}

}  // namespace iovirt::sriov
