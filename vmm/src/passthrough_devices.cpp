#include "iovirt/vmm/passthrough_devices.hpp"

#include <poll.h>

#include <fstream>
#include <mutex>
#include <thread>
#include <map>
#include <set>
#include <sstream>

#include "iovirt/core/log.hpp"
#include "iovirt/irq/gsi_router.hpp"
#include "iovirt/irq/irq_chip.hpp"
#include "iovirt/vfio/container.hpp"
#include "iovirt/vfio/host_checks.hpp"
#include "iovirt/vfio/interrupt_report.hpp"
#include "iovirt/vfio/kvm_vfio.hpp"
#include "iovirt/vfio/passthrough.hpp"
#include "iovirt/vfio/vfio_device.hpp"
#include "iovirt/vmm/memory_slots.hpp"
#include "iovirt/vmm/pci_root.hpp"

namespace iovirt {

namespace {
// KVM's per-VM slot budget is 509 on x86 (KVM_CAP_NR_MEMSLOTS); RAM takes a few and each BAR
// at most three (the MSI-X page splits a BAR's memory in two).
constexpr uint32_t kMaxDeviceSlots = 256;
}  // namespace

// Member order is teardown order, reversed: devices go first (they use the slots, the DMA
// mappings and the group fds), then the DMA mappings, the KVM-VFIO device, the container.
struct PassthroughDevices::State {
  std::unique_ptr<vfio::Container> container;
  std::optional<vfio::KvmVfioDevice> kvm_vfio;
  vfio::DmaMappings dma;
  std::unique_ptr<DeviceMemorySlots> slots;
  std::mutex mu;  // the sampler thread vs teardown
  struct Dev {
    PciAddress address;
    std::unique_ptr<vfio::VfioDeviceTransport> transport;
    std::unique_ptr<vfio::PassthroughDevice> device;
    std::map<std::string, Gauge*> host_irqs;
    // Last counts seen per vector: the lines vanish from /proc/interrupts when the guest's driver
    // (or its shutdown) turns MSI/MSI-X off, so the teardown report uses what was sampled last.
    std::map<std::string, uint64_t> last;
  };
  std::vector<Dev> devs;
  MetricsRegistry* metrics = nullptr;
  std::optional<EventFd> stop;
  std::thread sampler;

  ~State() {
    if (sampler.joinable()) {
      (void)stop->write();
      sampler.join();
    }
    for (auto& d : devs)
      if (d.device) d.device->detach();
    devs.clear();
    if (auto s = dma.release(); !s) log_warn("vfio: DMA unmap at teardown: " + s.error().what());
  }
};

PassthroughDevices::PassthroughDevices(std::unique_ptr<State> s) : s_(std::move(s)) {}

PassthroughDevices::~PassthroughDevices() {
  if (!s_) return;
  sample_interrupts();
  for (const auto& d : s_->devs) {
    if (d.last.empty()) continue;
    std::string line = "vfio: " + d.address.to_string() + ": host interrupts per vector:";
    for (const auto& [vec, n] : d.last) line += " " + vec + "=" + std::to_string(n);
    log_info(line);
  }
}

Result<std::unique_ptr<PassthroughDevices>> PassthroughDevices::create(
    const std::vector<DeviceOption>& devices, const Env& env) {
  Sysfs sysfs(env.sysfs_root);
  // 1. Host checks for every device before anything is opened.
  std::vector<vfio::GroupCheck> checks;
  for (const auto& d : devices) {
    IOVIRT_TRY_CTX(check, vfio::check_device(sysfs, d.address, env.dev_root),
                   "--device " + d.address.to_string());
    checks.push_back(std::move(check));
  }
  IOVIRT_CHECK_CTX(vfio::check_memlock(env.mem.total_size()), "--device");

  auto st = std::make_unique<State>();
  st->metrics = &env.metrics;
  IOVIRT_TRY_CTX(container, vfio::open_container(env.dev_root), "--device");
  st->container = std::move(container);
  log_info("vfio: " + std::string(st->container->kind()) + " container; " +
           vfio::detect_posted_interrupts(sysfs).summary);

  // 2. Groups and device fds; every group to the KVM-VFIO device.
  IOVIRT_TRY_CTX(kv, vfio::KvmVfioDevice::create(env.vm), "--device: KVM-VFIO device");
  st->kvm_vfio.emplace(std::move(kv));
  std::set<int> groups_added;
  std::vector<vfio::OpenedDevice> opened;
  for (size_t i = 0; i < devices.size(); ++i) {
    const std::string name = devices[i].address.to_string();
    IOVIRT_TRY_CTX(od, st->container->open_device(devices[i].address, checks[i].group),
                   "--device " + name);
    if (groups_added.insert(od.group_fd).second)
      IOVIRT_CHECK_CTX(st->kvm_vfio->add_group(od.group_fd),
                       "--device " + name + ": adding IOMMU group " + std::to_string(od.group) +
                           " to KVM");
    opened.push_back(std::move(od));
  }

  // 3. Guest RAM for DMA, before any device can master the bus.
  IOVIRT_TRY_CTX(dma, vfio::map_guest_memory(*st->container, env.mem), "--device: DMA map of guest RAM");
  st->dma = std::move(dma);

  // 4. The devices.
  const VmFd& vm = env.vm;
  st->slots = std::make_unique<DeviceMemorySlots>(
      env.mem, env.first_slot, kMaxDeviceSlots,
      [&vm](uint32_t slot, uint64_t gpa, uint64_t size, void* host) {
        return vm.set_user_memory_region(slot, gpa, size, host);
      });
  for (size_t i = 0; i < devices.size(); ++i) {
    const std::string name = devices[i].address.to_string();
    State::Dev d;
    d.address = devices[i].address;
    d.transport = std::make_unique<vfio::VfioDeviceTransport>(name, std::move(opened[i].device));
    IOVIRT_TRY_CTX(dev, vfio::PassthroughDevice::create(*d.transport, *st->slots, env.router,
                                                       env.chip, env.metrics, name),
                   "--device " + name);
    d.device = std::move(dev);
    IOVIRT_TRY_CTX(slot, env.root.add_device(*d.device), "--device " + name);
    // INTx: the slot's pin goes to the GSI the DSDT's _PRT names for it (pci_root.hpp). Not
    // fatal: without it the guest sees pin 0 and its driver uses MSI or MSI-X, as before.
    if (const uint8_t pin = d.device->intx_pin(); pin != 0) {
      if (auto s = d.device->set_intx_gsi(pci_intx_gsi(slot, pin)); !s)
        log_warn("vfio: " + name + ": INTx not offered to the guest (" + s.error().message() +
                 "); its driver must use MSI or MSI-X");
    }
    log_info("vfio: " + name + " (IOMMU group " + std::to_string(checks[i].group) +
             ") passed through at PCI 00:" + (slot < 10 ? "0" : "") + std::to_string(slot) + ".0");
    st->devs.push_back(std::move(d));
  }
  IOVIRT_TRY_CTX(stop, EventFd::create(), "--device");
  st->stop.emplace(std::move(stop));
  std::unique_ptr<PassthroughDevices> out(new PassthroughDevices(std::move(st)));
  // The host's per-vector counts, every 2 s, into the metrics gauges.
  out->s_->sampler = std::thread([raw = out.get()] {
    pollfd p{raw->s_->stop->fd(), POLLIN, 0};
    while (::poll(&p, 1, 2000) == 0) raw->sample_interrupts();
  });
  return out;
}

void PassthroughDevices::sample_interrupts() {
  std::lock_guard lock(s_->mu);
  std::ifstream in("/proc/interrupts");
  std::stringstream text;
  text << in.rdbuf();
  for (auto& d : s_->devs) {
    const std::string bdf = d.address.to_string();
    auto counts = vfio::host_vector_interrupts(text.str(), bdf);
    if (!counts) {
      log_warn("vfio: " + bdf + ": reading /proc/interrupts: " + counts.error().what());
      continue;
    }
    for (const auto& [vec, n] : *counts) {
      d.last[vec] = n;
      auto [it, added] = d.host_irqs.try_emplace(vec, nullptr);
      if (added)
        it->second = &s_->metrics->gauge("iovirt_vfio_host_interrupts",
                                         "Interrupts the host took on a passthrough vector "
                                         "(/proc/interrupts; posted interrupts bypass it)",
                                         {{"device", bdf}, {"vector", vec}});
      it->second->set(static_cast<int64_t>(n));
    }
  }
}

}  // namespace iovirt
