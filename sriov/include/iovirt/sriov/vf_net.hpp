// Network settings of an SR-IOV VF, held by its PF's netdev: MAC, VLAN + QoS, spoof checking,
// trust, link state, tx rate limits. The kernel keeps them on the PF side (the VF's own driver,
// here the guest's, cannot change them), which is what makes them a host policy a VMM must own.
//
// Kernel ABI (include/uapi/linux/if_link.h): RTM_SETLINK on the PF with IFLA_VFINFO_LIST ->
// IFLA_VF_INFO -> IFLA_VF_MAC / IFLA_VF_VLAN / IFLA_VF_SPOOFCHK / IFLA_VF_TRUST /
// IFLA_VF_LINK_STATE / IFLA_VF_RATE, each carrying the VF index; read back with RTM_GETLINK and
// IFLA_EXT_MASK = RTEXT_FILTER_VF (without it the kernel omits the VF list). This is what
// `ip link set PF vf N ...` does.
//
// Addressing: a VF is named either by its PCI address (the PF's netdev and the VF index come from
// sysfs: physfn, virtfnN, PF/net/*) or as NETDEV:vfN (the PF's interface and the VF index), which
// also reaches VFs that are not PCI functions (netdevsim's) and VFs whose PCI side is not visible.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "iovirt/core/error.hpp"
#include "iovirt/core/sysfs.hpp"

namespace iovirt::sriov {

enum class VfLinkState : std::uint8_t { Auto = 0, Enable = 1, Disable = 2 };  // IFLA_VF_LINK_STATE_*

// Every field optional: in a request, only the given ones are changed; read back, a field the
// driver does not report stays empty.
struct VfNetSettings {
  std::optional<std::array<std::uint8_t, 6>> mac;
  std::optional<std::uint16_t> vlan;  // 0 = no VLAN, 1..4094
  std::optional<std::uint8_t> qos;    // 802.1p priority 0..7, only with a VLAN
  std::optional<bool> spoofchk;
  std::optional<bool> trust;
  std::optional<VfLinkState> link_state;
  std::optional<std::uint32_t> min_tx_rate;  // Mbit/s, 0 = no limit
  std::optional<std::uint32_t> max_tx_rate;  // Mbit/s, 0 = no limit

  [[nodiscard]] bool empty() const;
  friend bool operator==(const VfNetSettings&, const VfNetSettings&) = default;
};

// "mac=52:54:00:12:34:56,vlan=100,qos=3,spoofchk=on,trust=off,state=auto,min_tx_rate=0,
// max_tx_rate=1000". Keys are those of `ip link set PF vf N`. Errors name the key and the range.
Result<VfNetSettings> parse_vf_settings(std::string_view text);
std::string format_mac(const std::array<std::uint8_t, 6>& mac);
Result<std::array<std::uint8_t, 6>> parse_mac(std::string_view text);
std::string_view link_state_name(VfLinkState s);
// "mac=..,vlan=.." of the fields that are set (the inverse of parse_vf_settings).
std::string format_vf_settings(const VfNetSettings& s);

// Where a VF is, for network configuration: by PCI address, or by PF netdev + index.
struct VfTarget {
  std::optional<PciAddress> pci;  // set for DDDD:BB:DD.F
  std::string netdev;             // set for NETDEV:vfN
  unsigned index = 0;
  [[nodiscard]] std::string to_string() const;
};
Result<VfTarget> parse_vf_target(std::string_view text);

// The seam between policy (what to set, verification) and the kernel (rtnetlink). Tests use a
// fake; netlink_vf_config() is the real one.
class VfNetConfig {
 public:
  virtual ~VfNetConfig() = default;
  // Applies the fields that are set on VF `vf` of PF interface `pf_netdev`.
  virtual Status set(const std::string& pf_netdev, unsigned vf, const VfNetSettings& s) = 0;
  // What the kernel reports for that VF now.
  virtual Result<VfNetSettings> get(const std::string& pf_netdev, unsigned vf) = 0;
};

// rtnetlink through libnl-route-3 (sriov/src/netlink.cpp). Needs CAP_NET_ADMIN to set.
std::unique_ptr<VfNetConfig> netlink_vf_config();

// set(), then get() and compare every requested field; an error names the first field that did
// not stick ("the driver accepted it but reports ..."), since some drivers silently ignore some.
// Returns what was read back.
Result<VfNetSettings> apply_vf_settings(VfNetConfig& cfg, const std::string& pf_netdev, unsigned vf,
                                        const VfNetSettings& want);

}  // namespace iovirt::sriov
