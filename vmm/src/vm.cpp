#include "iovirt/vmm/vm.hpp"

#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/sysinfo.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "iovirt/core/event_loop.hpp"
#include "iovirt/core/log.hpp"
#include "iovirt/core/metrics_http.hpp"
#include "iovirt/irq/gsi_router.hpp"
#include "iovirt/irq/irq_chip.hpp"
#include "iovirt/virtio/device.hpp"
#include "iovirt/virtio/pci_transport.hpp"
#include "iovirt/vmm/acpi.hpp"
#include "iovirt/vmm/layout.hpp"
#include "iovirt/vmm/legacy.hpp"
#include "iovirt/vmm/passthrough_devices.hpp"
#include "iovirt/vmm/pci_root.hpp"
#include "iovirt/vmm/virtio_devices.hpp"
#include "iovirt/vmm/x86_boot.hpp"

namespace iovirt {

namespace {

// The signal that kicks a vCPU thread out of KVM_RUN; its handler does nothing.
int kick_signal() { return SIGRTMIN; }
void on_kick(int) {}

// The signals that stop a VM, taken by the main loop's signalfd.
sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  return set;
}

std::string mib(uint64_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

uint64_t host_ram() {
  struct sysinfo si{};
  if (::sysinfo(&si) != 0) return 0;
  return static_cast<uint64_t>(si.totalram) * si.mem_unit;
}

// Puts an interactive terminal into character mode (no line buffering, no local echo: the
// guest echoes) while keeping ^C as a signal to iovirt. Restores it on destruction.
class TerminalGuard final {
 public:
  TerminalGuard() {
    if (!::isatty(STDIN_FILENO) || ::tcgetattr(STDIN_FILENO, &saved_) != 0) return;
    termios raw = saved_;
    raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO);
    raw.c_iflag &= ~static_cast<tcflag_t>(ICRNL);
    raw.c_cc[VMIN] = 1;
    raw.c_cc[VTIME] = 0;
    active_ = ::tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
  }
  ~TerminalGuard() {
    if (active_) ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
  }
  TerminalGuard(const TerminalGuard&) = delete;
  TerminalGuard& operator=(const TerminalGuard&) = delete;

 private:
  termios saved_{};
  bool active_ = false;
};

void write_all(int fd, const uint8_t* p, size_t n) {
  while (n) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;  // console gone: drop output rather than stall a vCPU
    p += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace

int exit_status(VmExit reason, int signo) {
  switch (reason) {
    case VmExit::Poweroff: return 0;
    case VmExit::Reset: return 3;
    case VmExit::Signal: return 128 + signo;
    case VmExit::None:
    case VmExit::Error: return 1;
  }
  return 1;
}

Vm::Vm(Kvm kvm, VmFd vm, GuestMemory mem, VmConfig cfg)
    : cfg_(std::move(cfg)), kvm_(std::move(kvm)), vm_(std::move(vm)), mem_(std::move(mem)) {}

Vm::~Vm() {
  stop_vcpus();
}

Vm::VirtioSlot::VirtioSlot() = default;
Vm::VirtioSlot::VirtioSlot(VirtioSlot&&) noexcept = default;
Vm::VirtioSlot::~VirtioSlot() {
  pci.reset();  // stops the device's threads before the device goes
  dev.reset();
}

Status Vm::add_virtio_devices() {
  irqchip_ = std::make_unique<KvmIrqChip>(vm_);
  router_ = std::make_unique<GsiRouter>(*irqchip_);
  auto add = [&](Result<std::unique_ptr<virtio::VirtioDevice>> made, const RingOptions& ring,
                 const std::string& what) -> Status {
    if (!made) return std::unexpected(std::move(made.error()));
    VirtioSlot slot;
    slot.dev = std::move(*made);
    IOVIRT_TRY_CTX(pci, virtio::VirtioPciDevice::create(*slot.dev, mem_, *router_, *irqchip_, metrics_,
                                                        transport_options(ring)),
                   what);
    slot.pci = std::move(pci);
    IOVIRT_TRY_CTX(pci_slot, pci_->add_device(*slot.pci), what);
    log_info(what + " at PCI 00:" + (pci_slot < 10 ? "0" : "") + std::to_string(pci_slot) + ".0");
    virtio_.push_back(std::move(slot));
    return {};
  };
  for (size_t i = 0; i < cfg_.disks.size(); ++i) {
    const std::string name = "blk" + std::to_string(i);
    const auto& d = cfg_.disks[i];
    const std::string what = d.vhost_user.empty() ? d.path : "vhost-user " + d.vhost_user;
    IOVIRT_CHECK_CTX(add(make_virtio_disk(d, metrics_, name), d.ring, name + " (" + what + ")"), "--disk");
  }
  for (size_t i = 0; i < cfg_.nets.size(); ++i) {
    const std::string name = "net" + std::to_string(i);
    const auto& n = cfg_.nets[i];
    const std::string what = n.vhost_user.empty() ? "tap " + n.tap : "vhost-user " + n.vhost_user;
    IOVIRT_CHECK_CTX(add(make_virtio_net(n, metrics_, name), n.ring, name + " (" + what + ")"), "--net");
  }
  return {};
}

namespace {
// Milliseconds since the process started building the VM, for IOVIRT_LOG=debug phase timings.
std::string since(std::chrono::steady_clock::time_point t0) {
  auto ms = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count();
  return std::to_string(ms / 1000) + "." + std::to_string((ms % 1000) / 100) + " ms";
}
}  // namespace

Result<std::unique_ptr<Vm>> Vm::create(const VmConfig& cfg) {
  // SIGINT/SIGTERM/SIGHUP are taken by the main loop through a signalfd. Block them before any
  // thread exists (civetweb's included), so that none of them can take the default action.
  const sigset_t sigs = stop_signals();
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  IOVIRT_TRY_CTX(kvm, Kvm::open(), "KVM");
  if (::access("/sys/module/kvm_pvm", F_OK) == 0)
    log_warn("this host's KVM is kvm_pvm (paravirtual, no VT-x/AMD-V): guest kernel code runs "
             "emulated, thousands of times slower; boot Linux guests in the nested lab (deploy/run.sh)");
  int max = kvm.max_vcpus();
  if (cfg.cpus > static_cast<uint32_t>(max))
    return fail("--cpus " + std::to_string(cfg.cpus) + ": this host's KVM allows at most " + std::to_string(max) +
                " vCPUs per VM");
  uint64_t ram = host_ram();
  if (ram && cfg.memory > ram)
    return fail("--memory " + mib(cfg.memory) + " is more than this host's RAM (" + mib(ram) + ")");

  uint64_t low = std::min(cfg.memory, layout::kPciHole);
  uint64_t high = cfg.memory - low;
  std::vector<RegionSpec> regions{{0, low}};
  if (high) regions.push_back({layout::kHighRam, high});
  auto mem = GuestMemory::create(regions, cfg.hugepages ? MemoryBacking::Hugetlb : MemoryBacking::Memfd);
  if (!mem) return std::unexpected(mem.error());  // its messages already start with "guest memory:"
  IOVIRT_TRY_CTX(vm, kvm.create_vm(), "VM");
  std::unique_ptr<Vm> v(new Vm(std::move(kvm), std::move(vm), std::move(*mem), cfg));
  if (auto s = v->build(); !s) return std::unexpected(s.error());
  return v;
}

Status Vm::build() {
  const auto t0 = std::chrono::steady_clock::now();
  IOVIRT_TRY_CTX(ev, EventFd::create(), "exit eventfd");
  exit_event_ = std::make_unique<EventFd>(std::move(ev));

  // VMX needs these scratch pages inside the PCI hole; SVM and others accept and ignore them.
  if (vm_.check_extension(KVM_CAP_SET_TSS_ADDR)) {
    if (auto s = vm_.set_tss_addr(layout::kTssAddr); !s) return s;
  }
  if (vm_.check_extension(KVM_CAP_SET_IDENTITY_MAP_ADDR)) {
    if (auto s = vm_.set_identity_map_addr(layout::kIdentityMap); !s) log_debug(s.error().message());
  }
  if (auto s = vm_.create_irqchip(); !s) return s;
  if (auto s = vm_.create_pit2(); !s) return s;

  uint32_t slot = 0;
  for (const auto& r : mem_.regions()) {
    if (auto s = vm_.set_user_memory_region(slot++, r.gpa, r.size, r.host); !s) return s;
  }

  log_debug("memory slots set: " + since(t0));
  // Legacy devices.
  serial_ = std::make_unique<Serial16550>(
      [this](bool level) {
        if (auto s = vm_.irq_line(layout::kCom1Irq, level); !s) log_warn(s.error().message());
      },
      [](uint8_t b) { write_all(STDOUT_FILENO, &b, 1); });
  i8042_ = std::make_unique<I8042>([this] { request_exit(VmExit::Reset, "guest reset through the i8042"); });
  pm_ = std::make_unique<AcpiPmDevice>([this] { request_exit(VmExit::Poweroff, "guest powered off"); },
                                       [this] { request_exit(VmExit::Reset, "guest reset through ACPI"); });
  if (auto s = pio_.insert(layout::kCom1, 8, serial_.get()); !s) return s;
  if (auto s = pio_.insert(0x60, 5, i8042_.get()); !s) return s;
  if (auto s = pio_.insert(layout::kAcpiPmBase, 3, pm_.get()); !s) return s;

  // PCI root complex: host bridge, config mechanism #1, BAR windows.
  uint64_t mmio64_base = (layout::kHighRam + (cfg_.memory - std::min(cfg_.memory, layout::kPciHole)) + (1ull << 30) - 1) &
                         ~((1ull << 30) - 1);
  PciWindows win{layout::kPioIoWindowBase, layout::kPioIoWindowSize, layout::kMmio32Base, layout::kMmio32Size,
                 mmio64_base, layout::kMmio64Size};
  pci_ = std::make_unique<PciRoot>(pio_, mmio_, win);
  if (auto s = pio_.insert(PciRoot::kConfigAddressPort, PciRoot::kConfigPortsLen, &pci_->config_ports()); !s)
    return s;
  if (auto s = add_virtio_devices(); !s) return s;
  if (!cfg_.devices.empty()) {
    PassthroughDevices::Env env{vm_, mem_, *pci_, *router_, *irqchip_, metrics_,
                                static_cast<uint32_t>(mem_.regions().size())};
    auto pt = PassthroughDevices::create(cfg_.devices, env);
    if (!pt) return std::unexpected(std::move(pt.error()));
    passthrough_ = std::move(*pt);
    log_debug("passthrough devices attached: " + since(t0));
  }

  // ACPI tables in the BIOS area, where Linux also finds the RSDP by scanning.
  AcpiConfig acfg;
  acfg.cpus = cfg_.cpus;
  acfg.rsdp_gpa = layout::kAcpiStart;
  acfg.mmio32_base = win.mmio32_base;
  acfg.mmio32_size = win.mmio32_size;
  acfg.mmio64_base = win.mmio64_base;
  acfg.mmio64_size = win.mmio64_size;
  acfg.io_base = static_cast<uint16_t>(win.io_base);
  acfg.io_size = static_cast<uint16_t>(win.io_size);
  acfg.pm_base = layout::kAcpiPmBase;
  acfg.ioapic_addr = static_cast<uint32_t>(layout::kIoApic);
  acfg.lapic_addr = static_cast<uint32_t>(layout::kLapic);
  IOVIRT_TRY_CTX(tables, build_acpi_tables(acfg), "ACPI tables");
  if (tables.size() > layout::kBiosEnd - layout::kAcpiStart) return fail("ACPI tables do not fit below 1 MiB");
  if (auto s = mem_.write(layout::kAcpiStart, tables); !s) return s;
  if (auto s = install_reset_stub(mem_); !s) return s;

  LinuxBootSpec boot;
  boot.kernel_path = cfg_.kernel;
  boot.initrd_path = cfg_.initrd;
  boot.cmdline = cfg_.cmdline;
  boot.low_ram = std::min(cfg_.memory, layout::kPciHole);
  boot.high_ram = cfg_.memory - boot.low_ram;
  boot.rsdp_gpa = layout::kAcpiStart;
  log_debug("devices and ACPI tables ready: " + since(t0));
  IOVIRT_TRY_CTX(info, load_linux(mem_, boot), "boot");
  log_debug("kernel and initrd loaded: " + since(t0));

  IOVIRT_TRY_CTX(mmap_size, kvm_.vcpu_mmap_size(), "vCPU");
  auto supported = kvm_.supported_cpuid();
  if (!supported)
    return fail(supported.error().message() +
                ": this KVM cannot describe guest CPUs (the paravirtual kvm_pvm module cannot boot Linux); "
                "run iovirt on a VT-x/AMD-V host, or in the nested lab (deploy/lab/lab.sh)");
  bool deadline = kvm_.check_extension(KVM_CAP_TSC_DEADLINE_TIMER) > 0;
  for (uint32_t i = 0; i < cfg_.cpus; ++i) {
    IOVIRT_TRY_CTX(vcpu, vm_.create_vcpu(i, mmap_size), "vCPU " + std::to_string(i));
    auto cpuid = vcpu_cpuid(*supported, i, cfg_.cpus, deadline);
    if (auto s = vcpu.set_cpuid(cpuid); !s) return s;
    if (auto s = setup_vcpu_common(vcpu); !s) return s;
    if (i == 0) {
      if (auto s = setup_boot_vcpu(vcpu, info); !s) return s;
    }
    vcpus_.push_back(std::move(vcpu));
    Labels l{{"vcpu", std::to_string(i)}};
    auto with = [&](const char* reason) {
      Labels x = l;
      x.emplace_back("reason", reason);
      return &metrics_.counter("iovirt_vcpu_exits_total", "vCPU exits to userspace by reason", x);
    };
    counters_.push_back({with("io"), with("mmio"), with("intr"), with("other")});
  }
  unclaimed_pio_ = &metrics_.counter("iovirt_unclaimed_accesses_total", "Accesses no device claimed",
                                     {{"bus", "pio"}});
  unclaimed_mmio_ = &metrics_.counter("iovirt_unclaimed_accesses_total", "Accesses no device claimed",
                                      {{"bus", "mmio"}});
  metrics_.gauge("iovirt_vm_vcpus", "vCPUs in the VM").set(cfg_.cpus);
  metrics_.gauge("iovirt_vm_memory_bytes", "Guest RAM").set(static_cast<int64_t>(cfg_.memory));

  log_debug("vCPUs configured: " + since(t0));
  if (!cfg_.metrics.empty()) {
    IOVIRT_TRY_CTX(srv, MetricsServer::start(metrics_, cfg_.metrics), "metrics");
    metrics_server_ = std::move(srv);
  }
  return {};
}

void Vm::request_exit(VmExit reason, std::string why) {
  {
    std::lock_guard lock(exit_mu_);
    if (exit_ != VmExit::None) return;
    exit_ = reason;
    exit_why_ = std::move(why);
  }
  stopping_.store(true);
  if (exit_event_) (void)exit_event_->write(1);
}

void Vm::note_unclaimed(const char* bus, uint64_t addr, bool write) {
  // Debug aid for bring-up: name the first few distinct unclaimed addresses once each.
  if (!log_enabled(LogLevel::Debug)) return;
  std::lock_guard lock(unclaimed_mu_);
  if (unclaimed_seen_.size() >= 64 || !unclaimed_seen_.insert(addr).second) return;
  char buf[96];
  std::snprintf(buf, sizeof buf, "unclaimed %s %s at 0x%llx", bus, write ? "write" : "read",
                static_cast<unsigned long long>(addr));
  log_debug(buf);
}

void Vm::handle_io(kvm_run* run) {
  auto* base = reinterpret_cast<uint8_t*>(run) + run->io.data_offset;
  size_t size = run->io.size;
  for (uint32_t i = 0; i < run->io.count; ++i) {
    std::span<uint8_t> data(base + i * size, size);
    if (run->io.direction == KVM_EXIT_IO_OUT) {
      if (!pio_.write(run->io.port, data)) {
        unclaimed_pio_->inc();
        note_unclaimed("pio", run->io.port, true);
      }
    } else if (!pio_.read(run->io.port, data)) {
      std::fill(data.begin(), data.end(), 0xff);
      unclaimed_pio_->inc();
      note_unclaimed("pio", run->io.port, false);
    }
  }
}

void Vm::handle_mmio(kvm_run* run) {
  size_t len = std::min<size_t>(run->mmio.len, sizeof run->mmio.data);
  std::span<uint8_t> data(run->mmio.data, len);
  if (run->mmio.is_write) {
    if (!mmio_.write(run->mmio.phys_addr, data)) {
      unclaimed_mmio_->inc();
      note_unclaimed("mmio", run->mmio.phys_addr, true);
    }
  } else if (!mmio_.read(run->mmio.phys_addr, data)) {
    std::fill(data.begin(), data.end(), 0xff);
    unclaimed_mmio_->inc();
    note_unclaimed("mmio", run->mmio.phys_addr, false);
  }
}

void Vm::vcpu_thread(size_t index) {
  VcpuFd& vcpu = vcpus_[index];
  VcpuCounters& c = counters_[index];
  // Only this thread takes the kick signal; the main thread handles the others via signalfd.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, kick_signal());
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);

  while (!stopping_.load(std::memory_order_acquire)) {
    if (auto s = vcpu.run_once(); !s) {
      request_exit(VmExit::Error, s.error().message());
      return;
    }
    kvm_run* run = vcpu.run();
    switch (run->exit_reason) {
      case KVM_EXIT_IO:
        c.io->inc();
        handle_io(run);
        break;
      case KVM_EXIT_MMIO:
        c.mmio->inc();
        handle_mmio(run);
        break;
      case KVM_EXIT_INTR:
        c.intr->inc();
        break;
      case KVM_EXIT_SHUTDOWN:
        request_exit(VmExit::Reset, "vCPU " + std::to_string(index) + " shut down (triple fault or reboot)");
        return;
      case KVM_EXIT_SYSTEM_EVENT:
        if (run->system_event.type == KVM_SYSTEM_EVENT_SHUTDOWN)
          request_exit(VmExit::Poweroff, "guest powered off");
        else
          request_exit(VmExit::Reset, "guest reset (system event)");
        return;
      case KVM_EXIT_FAIL_ENTRY:
        request_exit(VmExit::Error, "vCPU " + std::to_string(index) + ": KVM entry failed, hardware reason " +
                                        std::to_string(run->fail_entry.hardware_entry_failure_reason));
        return;
      case KVM_EXIT_INTERNAL_ERROR:
        request_exit(VmExit::Error, "vCPU " + std::to_string(index) + ": KVM internal error, suberror " +
                                        std::to_string(run->internal.suberror));
        return;
      case KVM_EXIT_HLT:
        // Only without an in-kernel LAPIC; iovirt always has one.
        c.other->inc();
        break;
      default:
        c.other->inc();
        request_exit(VmExit::Error, "vCPU " + std::to_string(index) + ": unexpected KVM exit reason " +
                                        std::to_string(run->exit_reason));
        return;
    }
  }
}

void Vm::stop_vcpus() {
  stopping_.store(true);
  for (size_t i = 0; i < threads_.size(); ++i) {
    if (!threads_[i].joinable()) continue;
    vcpus_[i].set_immediate_exit(true);
    pthread_kill(threads_[i].native_handle(), kick_signal());
  }
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

int Vm::run() {
  // Blocked since create(); every thread inherited the mask.
  const sigset_t sigs = stop_signals();
  Fd sfd(::signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK));
  struct sigaction sa{};
  sa.sa_handler = on_kick;  // no SA_RESTART: KVM_RUN returns EINTR
  sigaction(kick_signal(), &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto loop = EventLoop::create();
  if (!loop || !sfd) {
    log_error(!loop ? loop.error().message() : "signalfd failed");
    return 1;
  }
  TerminalGuard term;

  for (size_t i = 0; i < vcpus_.size(); ++i) threads_.emplace_back([this, i] { vcpu_thread(i); });

  (void)loop->add(sfd.get(), EPOLLIN, [&](uint32_t) {
    signalfd_siginfo si{};
    if (::read(sfd.get(), &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
      {
        std::lock_guard lock(exit_mu_);
        if (exit_ == VmExit::None) exit_signal_ = static_cast<int>(si.ssi_signo);
      }
      request_exit(VmExit::Signal, std::string("stopped by signal ") + strsignal(static_cast<int>(si.ssi_signo)));
    }
  });
  (void)loop->add(exit_event_->fd(), EPOLLIN, [&](uint32_t) {
    (void)exit_event_->read();
    loop->stop();
  });
  auto stdin_cb = [&](uint32_t) {
    uint8_t buf[256];
    ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
    if (n > 0) {
      serial_->enqueue_input(std::span(buf, static_cast<size_t>(n)));
    } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
      (void)loop->remove(STDIN_FILENO);  // EOF: the guest simply gets no more input
    }
  };
  if (auto s = loop->add(STDIN_FILENO, EPOLLIN, stdin_cb); !s) log_debug("console input off: " + s.error().message());

  if (auto s = loop->run(); !s) request_exit(VmExit::Error, s.error().message());
  stop_vcpus();

  std::lock_guard lock(exit_mu_);
  if (exit_ == VmExit::Error) {
    log_error(exit_why_);
  } else {
    log_info(exit_why_);
  }
  return exit_status(exit_, exit_signal_);
}

}  // namespace iovirt
