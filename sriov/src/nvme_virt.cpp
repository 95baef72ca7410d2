#include "iovirt/sriov/nvme_virt.hpp"

#include <fcntl.h>
#include <linux/nvme_ioctl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "iovirt/core/fd.hpp"
#include "iovirt/core/log.hpp"

namespace iovirt::sriov {
namespace {

std::uint16_t le16(const std::uint8_t* p) {
  return static_cast<std::uint16_t>(p[0] | (p[1] << 8));
}
std::uint32_t le32(const std::uint8_t* p) {
  return static_cast<std::uint32_t>(p[0]) | (static_cast<std::uint32_t>(p[1]) << 8) |
         (static_cast<std::uint32_t>(p[2]) << 16) | (static_cast<std::uint32_t>(p[3]) << 24);
}

class IoctlAdmin final : public NvmeAdmin {
 public:
  IoctlAdmin(Fd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}
  Result<std::uint32_t> submit(const NvmeAdminCmd& c) override {
    nvme_admin_cmd cmd{};
    cmd.opcode = c.opcode;
    cmd.cdw10 = c.cdw10;
    cmd.cdw11 = c.cdw11;
    cmd.addr = reinterpret_cast<std::uintptr_t>(c.data.data());
    cmd.data_len = static_cast<std::uint32_t>(c.data.size());
    int r = ::ioctl(fd_.get(), NVME_IOCTL_ADMIN_CMD, &cmd);
    if (r < 0) return fail_errno("NVMe admin command " + std::to_string(c.opcode) + " on " + path_);
    if (r > 0) {
      char b[96];
      std::snprintf(b, sizeof b, "NVMe admin opcode %#x cdw10 %#x on %s: status %#x", c.opcode,
                    c.cdw10, path_.c_str(), static_cast<unsigned>(r));
      return fail(b);
    }
    return cmd.result;
  }

 private:
  Fd fd_;
  std::string path_;
};

}  // namespace

Result<std::unique_ptr<NvmeAdmin>> open_nvme_admin(const std::string& dev_path) {
  Fd fd(::open(dev_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return fail_errno("open " + dev_path + " (the PF's NVMe controller; needs root)");
  return std::unique_ptr<NvmeAdmin>(new IoctlAdmin(std::move(fd), dev_path));
}

std::uint32_t nvme_virt_mgmt_cdw10(NvmeVirtAct act, NvmeResource rt, std::uint16_t cntlid) {
  return static_cast<std::uint32_t>(act) | (static_cast<std::uint32_t>(rt) << 8) |
         (static_cast<std::uint32_t>(cntlid) << 16);
}

Result<NvmePrimaryCaps> nvme_primary_caps(NvmeAdmin& admin) {
  std::array<std::uint8_t, 4096> buf{};
  NvmeAdminCmd c;
  c.opcode = kNvmeOpcIdentify;
  c.cdw10 = kNvmeCnsPrimaryCaps;
  c.data = buf;
  if (auto r = admin.submit(c); !r) return fail("Identify Primary Controller Capabilities: " + r.error().message());
  const std::uint8_t* p = buf.data();
  NvmePrimaryCaps caps;
  caps.cntlid = le16(p + 0);
  caps.crt = p[4];
  caps.vqfrt = le32(p + 32);
  caps.vqrfap = le16(p + 40);
  caps.vqfrsm = le16(p + 44);
  caps.vifrt = le32(p + 64);
  caps.virfap = le16(p + 72);
  caps.vifrsm = le16(p + 76);
  return caps;
}

Result<std::vector<NvmeSecondary>> nvme_secondaries(NvmeAdmin& admin) {
  std::array<std::uint8_t, 4096> buf{};
  NvmeAdminCmd c;
  c.opcode = kNvmeOpcIdentify;
  c.cdw10 = kNvmeCnsSecondaryList;  // CNTID 0: from the lowest secondary id on
  c.data = buf;
  if (auto r = admin.submit(c); !r) return fail("Identify Secondary Controller List: " + r.error().message());
  // Byte 0: number of entries; entries of 32 bytes from byte 32 (at most 127 fit in 4 KiB).
  const unsigned n = std::min<unsigned>(buf[0], 127);
  std::vector<NvmeSecondary> out;
  out.reserve(n);
  for (unsigned i = 0; i < n; ++i) {
    const std::uint8_t* e = buf.data() + 32 + 32 * i;
    NvmeSecondary s;
    s.scid = le16(e + 0);
    s.online = (e[4] & 1) != 0;
    s.vfn = le16(e + 8);
    s.nvq = le16(e + 10);
    s.nvi = le16(e + 12);
    out.push_back(s);
  }
  return out;
}

Result<std::optional<std::string>> nvme_ctrl_of(const Sriov& sriov, const PciAddress& pf) {
  const auto dir = sriov.sysfs().pci_device(pf);
  if (!sriov.sysfs().exists(dir / "class")) return std::optional<std::string>{};
  auto cls = sriov.sysfs().read_uint(dir / "class");
  if (!cls) return std::unexpected(cls.error());
  if (*cls != 0x010802) return std::optional<std::string>{};
  auto names = sriov.sysfs().exists(dir / "nvme") ? sriov.sysfs().list(dir / "nvme")
                                                  : Result<std::vector<std::string>>{};
  if (!names) return std::unexpected(names.error());
  for (const auto& n : *names)
    if (n.rfind("nvme", 0) == 0) return std::optional<std::string>{n};
  return fail("NVMe PF " + pf.to_string() +
              " has no controller node (not bound to the nvme driver?): its VFs need NVMe "
              "virtualization management through the PF; bind it to nvme first");
}

namespace {

struct Step {
  NvmeVirtAct act;
  NvmeResource rt;
  std::uint16_t cntlid;
  std::uint16_t nr;
};

Status virt_mgmt(NvmeAdmin& admin, const Step& s, const std::string& pf) {
  NvmeAdminCmd c;
  c.opcode = kNvmeOpcVirtMgmt;
  c.cdw10 = nvme_virt_mgmt_cdw10(s.act, s.rt, s.cntlid);
  c.cdw11 = s.nr;
  if (auto r = admin.submit(c); !r) {
    return fail("NVMe PF " + pf + ": Virtualization Management (action " +
                std::to_string(static_cast<unsigned>(s.act)) + ", " +
                (s.rt == NvmeResource::Queues ? "queues" : "interrupts") + ", controller " +
                std::to_string(s.cntlid) + ", " + std::to_string(s.nr) + "): " + r.error().message());
  }
  return {};
}

}  // namespace

Status nvme_enable_vfs(Sriov& sriov, const PciAddress& pf, unsigned n,
                       const std::function<Result<std::unique_ptr<NvmeAdmin>>()>& reopen) {
  const std::string name = pf.to_string();
  IOVIRT_TRY_CTX(info, sriov.pf(pf), "enable VFs");
  if (n == 0 || n > info.total_vfs) return sriov.enable(pf, n);  // the library's refusal text
  IOVIRT_TRY_CTX(admin, reopen(), "NVMe PF " + name);
  IOVIRT_TRY_CTX(caps, nvme_primary_caps(*admin), "NVMe PF " + name);
  if ((caps.crt & 3) != 3) {
    log_info("sriov: NVMe PF " + name + " has no flexible queue/interrupt resources (CRT " +
             std::to_string(caps.crt) + "): plain enable");
    return sriov.enable(pf, n);
  }
  // Equal shares; a secondary needs an admin queue plus one I/O queue, and one vector.
  const std::uint32_t vq = std::min<std::uint32_t>(caps.vqfrsm, caps.vqfrt / n);
  const std::uint32_t vi = std::min<std::uint32_t>(caps.vifrsm, caps.vifrt / n);
  if (vq < 2 || vi < 1)
    return fail("NVMe PF " + name + ": " + std::to_string(caps.vqfrt) + " flexible queues and " +
                std::to_string(caps.vifrt) + " vectors cannot give " + std::to_string(n) +
                " VFs 2 queues and 1 vector each: enable fewer");
  if (info.num_vfs != 0) {
    // Secondaries get their resources only while offline and their VFs exist; start from 0.
    IOVIRT_CHECK_CTX(sriov.disable(pf), "NVMe PF " + name);
  }
  if (caps.vqrfap != 0 || caps.virfap != 0) {
    // Release the primary's flexible resources; they take effect at the next controller reset.
    for (NvmeResource rt : {NvmeResource::Interrupts, NvmeResource::Queues}) {
      if (auto st = virt_mgmt(*admin, {NvmeVirtAct::PrimaryFlexibleAllocation, rt, caps.cntlid, 0}, name); !st)
        return st;
    }
    admin.reset();
    IOVIRT_TRY_CTX(did, sriov.reset(pf), "NVMe PF " + name);
    if (!did) return fail("NVMe PF " + name + ": no reset attribute to apply the primary's new allocation");
    // The nvme driver re-initializes the controller after the reset; wait until it is live.
    auto ctrl = nvme_ctrl_of(sriov, pf);
    if (ctrl && *ctrl) {
      const auto state = sriov.sysfs().pci_device(pf) / "nvme" / **ctrl / "state";
      const auto deadline = std::chrono::steady_clock::now() + sriov.options().timeout;
      for (;;) {
        if (sriov.options().settle) sriov.options().settle();
        auto s = sriov.sysfs().read(state);
        if (!s || *s == "live") break;
        if (std::chrono::steady_clock::now() > deadline)
          return fail("NVMe PF " + name + ": controller " + **ctrl + " is '" + *s + "', not live, after its reset");
        std::this_thread::sleep_for(sriov.options().poll_interval);
      }
    }
    IOVIRT_TRY_CTX(again, reopen(), "NVMe PF " + name + " after reset");
    admin = std::move(again);
  }
  // Offline VFs cannot be probed: keep the host's drivers off them until they are online.
  const auto autoprobe = sriov.sysfs().pci_device(pf) / "sriov_drivers_autoprobe";
  if (info.drivers_autoprobe) IOVIRT_CHECK_CTX(sriov.sysfs().write(autoprobe, "0"), "NVMe PF " + name);
  auto restore_autoprobe = [&]() -> Status {
    if (!info.drivers_autoprobe) return {};
    return sriov.sysfs().write(autoprobe, "1");
  };
  if (auto s = sriov.enable(pf, n); !s) {
    (void)restore_autoprobe();
    return s;
  }
  auto secs = nvme_secondaries(*admin);
  if (!secs) {
    (void)restore_autoprobe();
    return fail("NVMe PF " + name + ": " + secs.error().message());
  }
  for (unsigned vfn = 1; vfn <= n; ++vfn) {
    auto it = std::find_if(secs->begin(), secs->end(), [&](const NvmeSecondary& s) { return s.vfn == vfn; });
    if (it == secs->end()) {
      (void)restore_autoprobe();
      return fail("NVMe PF " + name + ": no secondary controller for VF number " + std::to_string(vfn) +
                  " in the Secondary Controller List");
    }
    const auto nvq = static_cast<std::uint16_t>(vq);
    const auto nvi = static_cast<std::uint16_t>(vi);
    for (const Step& s : {Step{NvmeVirtAct::SecondaryOffline, NvmeResource::Queues, it->scid, 0},
                          Step{NvmeVirtAct::SecondaryAssign, NvmeResource::Queues, it->scid, nvq},
                          Step{NvmeVirtAct::SecondaryAssign, NvmeResource::Interrupts, it->scid, nvi},
                          Step{NvmeVirtAct::SecondaryOnline, NvmeResource::Queues, it->scid, 0}}) {
      if (s.act == NvmeVirtAct::SecondaryOffline && !it->online) continue;
      if (auto st = virt_mgmt(*admin, s, name); !st) {
        (void)restore_autoprobe();
        return st;
      }
    }
    log_info("sriov: NVMe PF " + name + ": VF " + std::to_string(vfn) + " (controller " +
             std::to_string(it->scid) + ") online with " + std::to_string(nvq) + " queues, " +
             std::to_string(nvi) + " vectors");
  }
  IOVIRT_CHECK_CTX(restore_autoprobe(), "NVMe PF " + name);
  if (info.drivers_autoprobe) {
    IOVIRT_TRY_CTX(now, sriov.pf(pf), "NVMe PF " + name);
    for (const auto& v : now.vfs) (void)sriov.sysfs().write(sriov.sysfs().pci_drivers_probe(), v.address.to_string());
  }
  return {};
}

}  // namespace iovirt::sriov
