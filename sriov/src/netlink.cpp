// VfNetConfig over rtnetlink with libnl-route-3 (see vf_net.hpp for the kernel ABI).
//
// Requests are built with libnl's message API, attribute by attribute, so exactly the requested
// VF fields go to the kernel (the kernel applies IFLA_VF_* in a fixed order and stops at the first
// the driver refuses). Replies are parsed by libnl-route (nl_msg_parse -> rtnl_link ->
// rtnl_link_vf_get). The GETLINK request carries IFLA_EXT_MASK = RTEXT_FILTER_VF, without which
// the kernel leaves the VF list out.
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netlink/attr.h>
#include <netlink/msg.h>
#include <netlink/netlink.h>
#include <netlink/route/link.h>
#include <netlink/route/link/sriov.h>
#include <netlink/socket.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include "iovirt/sriov/vf_net.hpp"

namespace iovirt::sriov {
namespace {

struct SockDeleter {
  void operator()(nl_sock* s) const { nl_socket_free(s); }
};
struct MsgDeleter {
  void operator()(nl_msg* m) const { nlmsg_free(m); }
};
using SockPtr = std::unique_ptr<nl_sock, SockDeleter>;
using MsgPtr = std::unique_ptr<nl_msg, MsgDeleter>;

std::string nl_error(int err) {
  std::string m = nl_geterror(err);
  int e = err < 0 ? -err : err;
  if (e == NLE_PERM) m += " (setting VF parameters needs CAP_NET_ADMIN: run as root)";
  if (e == NLE_OPNOTSUPP) m += " (the PF's driver does not support this VF setting)";
  if (e == NLE_INVAL || e == NLE_RANGE) m += " (check the VF index against sriov_numvfs and the value's range)";
  return m;
}

struct GetCtx {
  unsigned vf = 0;
  bool link_seen = false;
  bool vf_seen = false;
  std::uint32_t num_vfs = 0;
  VfNetSettings out;
};

void parse_link(nl_object* obj, void* arg) {
  auto* ctx = static_cast<GetCtx*>(arg);
  if (std::strcmp(nl_object_get_type(obj), "route/link") != 0) return;
  auto* link = reinterpret_cast<rtnl_link*>(obj);
  ctx->link_seen = true;
  // IFLA_NUM_VF comes first and the VF list only when it is non-zero; libnl 3.7's
  // rtnl_link_vf_get() must not be called on a link without a parsed VF list (it crashes).
  if (rtnl_link_get_num_vf(link, &ctx->num_vfs) < 0 || ctx->vf >= ctx->num_vfs) return;
  rtnl_link_vf* vf = rtnl_link_vf_get(link, ctx->vf);
  if (vf == nullptr) return;
  ctx->vf_seen = true;
  nl_addr* addr = nullptr;
  if (rtnl_link_vf_get_addr(vf, &addr) == 0 && addr != nullptr && nl_addr_get_len(addr) >= 6) {
    std::array<std::uint8_t, 6> mac{};
    std::memcpy(mac.data(), nl_addr_get_binary_addr(addr), 6);
    ctx->out.mac = mac;
  }
  // The kernel sends IFLA_VF_VLAN for every VF; libnl keeps a VLAN entry only for a non-zero
  // VLAN, so no entry means VLAN 0 (untagged), QoS 0.
  nl_vf_vlans_t* vlans = nullptr;
  ctx->out.vlan = 0;
  ctx->out.qos = 0;
  if (rtnl_link_vf_get_vlans(vf, &vlans) == 0 && vlans != nullptr && vlans->size > 0 &&
      vlans->vlans != nullptr) {
    ctx->out.vlan = static_cast<std::uint16_t>(vlans->vlans[0].vf_vlan);
    ctx->out.qos = static_cast<std::uint8_t>(vlans->vlans[0].vf_vlan_qos);
  }
  // The kernel pre-fills spoofchk/trust with -1 and keeps it when the driver has no such knob.
  std::uint32_t v = 0;
  if (rtnl_link_vf_get_spoofchk(vf, &v) == 0 && v <= 1) ctx->out.spoofchk = v == 1;
  if (rtnl_link_vf_get_trust(vf, &v) == 0 && v <= 1) ctx->out.trust = v == 1;
  if (rtnl_link_vf_get_linkstate(vf, &v) == 0 && v <= 2) ctx->out.link_state = static_cast<VfLinkState>(v);
  nl_vf_rate rate{};
  rate.api = RTNL_LINK_VF_RATE_API_NEW;
  if (rtnl_link_vf_get_rate(vf, &rate) == 0) {
    ctx->out.min_tx_rate = rate.min_tx_rate;
    ctx->out.max_tx_rate = rate.max_tx_rate;
  }
  rtnl_link_vf_put(vf);
}

int on_valid(nl_msg* msg, void* arg) {
  nl_msg_parse(msg, parse_link, arg);
  return NL_OK;
}

class NetlinkVfConfig final : public VfNetConfig {
 public:
  Status set(const std::string& pf, unsigned vf, const VfNetSettings& s) override {
    const std::string who = "set VF " + std::to_string(vf) + " of " + pf;
    auto ifindex = index_of(pf);
    if (!ifindex) return std::unexpected(ifindex.error());
    // The kernel sets min and max tx rate together: fill the one not given from what is there.
    VfNetSettings want = s;
    if (want.min_tx_rate.has_value() != want.max_tx_rate.has_value()) {
      auto cur = get(pf, vf);
      if (!cur) return std::unexpected(cur.error());
      if (!want.min_tx_rate) want.min_tx_rate = cur->min_tx_rate.value_or(0);
      if (!want.max_tx_rate) want.max_tx_rate = cur->max_tx_rate.value_or(0);
    }
    auto sk = open();
    if (!sk) return std::unexpected(sk.error());
    MsgPtr msg(nlmsg_alloc_simple(RTM_SETLINK, NLM_F_REQUEST));
    if (!msg) return fail(who + ": out of memory", ENOMEM);
    ifinfomsg ifi{};
    ifi.ifi_family = AF_UNSPEC;
    ifi.ifi_index = static_cast<int>(*ifindex);
    int err = nlmsg_append(msg.get(), &ifi, sizeof ifi, NLMSG_ALIGNTO);
    nlattr* list = err == 0 ? nla_nest_start(msg.get(), IFLA_VFINFO_LIST) : nullptr;
    nlattr* info = list ? nla_nest_start(msg.get(), IFLA_VF_INFO) : nullptr;
    if (info == nullptr) return fail(who + ": netlink message too large", ENOMEM);
    auto put = [&](int type, const auto& payload) {
      if (err == 0) err = nla_put(msg.get(), type, static_cast<int>(sizeof payload), &payload);
    };
    if (want.mac) {
      ifla_vf_mac m{};
      m.vf = vf;
      std::memcpy(m.mac, want.mac->data(), 6);
      put(IFLA_VF_MAC, m);
    }
    if (want.vlan) {
      ifla_vf_vlan v{};
      v.vf = vf;
      v.vlan = *want.vlan;
      v.qos = want.qos.value_or(0);
      put(IFLA_VF_VLAN, v);
    }
    if (want.min_tx_rate || want.max_tx_rate) {
      ifla_vf_rate r{};
      r.vf = vf;
      r.min_tx_rate = want.min_tx_rate.value_or(0);
      r.max_tx_rate = want.max_tx_rate.value_or(0);
      put(IFLA_VF_RATE, r);
    }
    if (want.spoofchk) {
      ifla_vf_spoofchk c{};
      c.vf = vf;
      c.setting = *want.spoofchk ? 1U : 0U;
      put(IFLA_VF_SPOOFCHK, c);
    }
    if (want.link_state) {
      ifla_vf_link_state l{};
      l.vf = vf;
      l.link_state = static_cast<std::uint32_t>(*want.link_state);
      put(IFLA_VF_LINK_STATE, l);
    }
    if (want.trust) {
      ifla_vf_trust t{};
      t.vf = vf;
      t.setting = *want.trust ? 1U : 0U;
      put(IFLA_VF_TRUST, t);
    }
    if (err != 0) return fail(who + ": building the request: " + nl_error(err));
    nla_nest_end(msg.get(), info);
    nla_nest_end(msg.get(), list);
    nl_socket_enable_auto_ack(sk->get());
    if (int e = nl_send_auto(sk->get(), msg.get()); e < 0)
      return fail(who + ": send: " + nl_error(e));
    if (int e = nl_wait_for_ack(sk->get()); e < 0)
      return fail(who + " (" + format_vf_settings(want) + "): " + nl_error(e));
    return {};
  }

  Result<VfNetSettings> get(const std::string& pf, unsigned vf) override {
    const std::string who = "read VF " + std::to_string(vf) + " of " + pf;
    auto ifindex = index_of(pf);
    if (!ifindex) return std::unexpected(ifindex.error());
    auto sk = open();
    if (!sk) return std::unexpected(sk.error());
    MsgPtr msg(nlmsg_alloc_simple(RTM_GETLINK, NLM_F_REQUEST));
    if (!msg) return fail(who + ": out of memory", ENOMEM);
    ifinfomsg ifi{};
    ifi.ifi_family = AF_UNSPEC;
    ifi.ifi_index = static_cast<int>(*ifindex);
    int err = nlmsg_append(msg.get(), &ifi, sizeof ifi, NLMSG_ALIGNTO);
    if (err == 0) err = nla_put_u32(msg.get(), IFLA_EXT_MASK, RTEXT_FILTER_VF);
    if (err != 0) return fail(who + ": building the request: " + nl_error(err));
    GetCtx ctx;
    ctx.vf = vf;
    // One reply message, no ACK to wait for.
    nl_socket_disable_auto_ack(sk->get());
    nl_socket_modify_cb(sk->get(), NL_CB_VALID, NL_CB_CUSTOM, on_valid, &ctx);
    if (int e = nl_send_auto(sk->get(), msg.get()); e < 0)
      return fail(who + ": send: " + nl_error(e));
    if (int e = nl_recvmsgs_default(sk->get()); e < 0) return fail(who + ": " + nl_error(e));
    if (!ctx.link_seen) return fail(who + ": the kernel sent no link in its reply");
    if (!ctx.vf_seen)
      return fail(who + ": " + pf + " reports " + std::to_string(ctx.num_vfs) + " VFs, no vf" +
                  std::to_string(vf) + " (is it an SR-IOV PF with that many VFs enabled? see sriov_numvfs)");
    return ctx.out;
  }

 private:
  static Result<unsigned> index_of(const std::string& ifname) {
    unsigned idx = if_nametoindex(ifname.c_str());
    if (idx == 0)
      return fail("no network interface " + ifname + " (check `ip link`; give the PF's interface)");
    return idx;
  }
  static Result<SockPtr> open() {
    SockPtr sk(nl_socket_alloc());
    if (!sk) return fail("netlink socket: out of memory", ENOMEM);
    if (int e = nl_connect(sk.get(), NETLINK_ROUTE); e < 0)
      return fail("connect NETLINK_ROUTE: " + nl_error(e));
    return sk;
  }
};

}  // namespace

std::unique_ptr<VfNetConfig> netlink_vf_config() { return std::make_unique<NetlinkVfConfig>(); }

}  // namespace iovirt::sriov
