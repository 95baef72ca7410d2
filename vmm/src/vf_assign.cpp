#include "iovirt/vmm/vf_assign.hpp"

#include <set>

#include "iovirt/core/log.hpp"

namespace iovirt {

VfAssignments::VfAssignments(const SriovCliEnv& env)
    : env_(env), sriov_(Sysfs(env.sysfs_root), env.options), pool_(sriov_, env.lease_dir()) {
  net_ = env_.net;
  if (net_ == nullptr) {
    own_net_ = sriov::netlink_vf_config();
    net_ = own_net_.get();
  }
  pool_.set_net_config(net_);
}

VfAssignments::~VfAssignments() {
  if (auto s = release(); !s) log_error("sriov: giving back VFs: " + s.error().message());
}

Result<std::unique_ptr<VfAssignments>> VfAssignments::acquire(VmConfig& cfg, const std::string& vm_name,
                                                              const SriovCliEnv& env) {
  std::unique_ptr<VfAssignments> self(new VfAssignments(env));
  for (const auto& want : cfg.vfs) {
    const std::string who = "--vf pf=" + want.pf.to_string();
    auto pf = self->sriov_.pf(want.pf);
    if (!pf) return fail(who + ": " + pf.error().message());
    if (!want.net.empty() && pf->netdevs.empty())
      return fail(who + ": network settings (" + sriov::format_vf_settings(want.net) +
                  ") need a PF with a network interface; this one has none");
    auto lease = self->pool_.allocate(want.pf, vm_name);
    if (!lease) return fail(who + ": " + lease.error().message());
    Assigned a;
    a.pf = want.pf;
    const PciAddress vf = lease->vf();
    a.lease = std::move(*lease);
    auto info = self->sriov_.vf(vf);
    if (!info) {
      self->assigned_.push_back(std::move(a));
      return fail(who + ": " + info.error().message());
    }
    a.index = info->index;
    if (!pf->netdevs.empty()) a.netdev = pf->netdevs.front();
    if (!want.net.empty()) {
      // Save the current values of the keys we change, so release() puts them back.
      auto cur = self->net_->get(a.netdev, a.index);
      if (!cur) {
        self->assigned_.push_back(std::move(a));
        return fail(who + ": " + cur.error().message());
      }
      sriov::VfNetSettings saved;
      if (want.net.mac) saved.mac = cur->mac;
      if (want.net.vlan || want.net.qos) {
        saved.vlan = cur->vlan.value_or(0);
        saved.qos = cur->qos.value_or(0);
      }
      if (want.net.spoofchk) saved.spoofchk = cur->spoofchk;
      if (want.net.trust) saved.trust = cur->trust;
      if (want.net.link_state) saved.link_state = cur->link_state;
      if (want.net.min_tx_rate || want.net.max_tx_rate) {
        saved.min_tx_rate = cur->min_tx_rate.value_or(0);
        saved.max_tx_rate = cur->max_tx_rate.value_or(0);
      }
      a.saved = saved;
      // Recorded before the change, so a reclaim after a crash puts them back too.
      sriov::LeaseRecord rec = a.lease.record();
      rec.net_dev = a.netdev;
      rec.net_index = a.index;
      rec.net_restore = sriov::format_vf_settings(saved);
      if (auto st = self->pool_.update(a.lease, rec); !st) {
        self->assigned_.push_back(std::move(a));
        return fail(who + ": " + st.error().message());
      }
      auto got = sriov::apply_vf_settings(*self->net_, a.netdev, a.index, want.net);
      self->assigned_.push_back(std::move(a));
      if (!got) return fail(who + ": " + got.error().message());
      log_info("sriov: VF " + vf.to_string() + " (" + self->assigned_.back().netdev + ":vf" +
               std::to_string(self->assigned_.back().index) + ") set " + sriov::format_vf_settings(want.net));
    } else {
      self->assigned_.push_back(std::move(a));
    }
    DeviceOption d;
    d.path = (env.sysfs_root / "bus/pci/devices" / vf.to_string()).string();
    d.address = vf;
    for (const auto& o : cfg.devices)
      if (o.address == vf) return fail(who + ": the pool gave VF " + vf.to_string() + ", which --device also names");
    cfg.devices.push_back(std::move(d));
    log_info("sriov: VF " + vf.to_string() + " of PF " + want.pf.to_string() + " leased to vm '" + vm_name + "'");
  }
  return self;
}

Status VfAssignments::release() {
  Status first;
  // Last taken, first given back.
  while (!assigned_.empty()) {
    Assigned a = std::move(assigned_.back());
    assigned_.pop_back();
    if (!a.lease.held()) continue;
    const PciAddress vf = a.lease.vf();
    // The pool puts the recorded network settings back, resets and rebinds.
    if (auto s = pool_.release(std::move(a.lease)); !s) {
      log_error("sriov: VF " + vf.to_string() + ": " + s.error().message());
      if (first) first = std::unexpected(s.error());
    }
  }
  return first;
}

void VfAssignments::publish_metrics(MetricsRegistry& m) const {
  std::set<PciAddress> pfs;
  for (const auto& a : assigned_) pfs.insert(a.pf);
  auto leases = pool_.list_leases();
  for (const auto& pf : pfs) {
    auto info = sriov_.pf(pf);
    if (!info) continue;
    std::int64_t leased = 0;
    if (leases) {
      for (const auto& l : *leases)
        if (l.alive && l.record.pf == pf) ++leased;
    }
    const Labels labels{{"pf", pf.to_string()}};
    m.gauge("iovirt_sriov_vfs_total", "VFs the PF supports (sriov_totalvfs)", labels)
        .set(info->total_vfs);
    m.gauge("iovirt_sriov_vfs_enabled", "VFs enabled on the PF (sriov_numvfs)", labels)
        .set(info->num_vfs);
    m.gauge("iovirt_sriov_vfs_leased", "VFs of the PF leased to live iovirt processes", labels)
        .set(leased);
  }
}

}  // namespace iovirt
