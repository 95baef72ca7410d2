#include "iovirt/virtio/pci_transport.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "iovirt/core/hex.hpp"
#include "iovirt/core/log.hpp"
#include "iovirt/virtio/ring.hpp"

namespace iovirt::virtio {
namespace {

using namespace pci_layout;

// struct virtio_pci_cap without the 2-byte PCI header (section 4.1.4): cap_len, cfg_type, bar,
// id, padding[2], offset (le32), length (le32).
constexpr size_t kCapBodySize = 14;

// Offsets inside the full capability (header included).
constexpr uint8_t kCapBar = 4;
constexpr uint8_t kCapOffset = 8;
constexpr uint8_t kCapLength = 12;
constexpr uint8_t kPciCfgData = 16;  // virtio_pci_cfg_cap.pci_cfg_data

uint64_t load_le(std::span<const uint8_t> bytes) {
  uint64_t v = 0;
  for (size_t i = bytes.size(); i-- > 0;) v = (v << 8) | bytes[i];
  return v;
}

void store_le(std::span<uint8_t> bytes, uint64_t v) {
  for (auto& b : bytes) {
    b = static_cast<uint8_t>(v);
    v >>= 8;
  }
}

std::vector<uint8_t> cap_bytes(uint8_t type, uint64_t offset, uint64_t length, size_t extra) {
  std::vector<uint8_t> out(kCapBodySize + extra, 0);
  out[0] = static_cast<uint8_t>(2 + kCapBodySize + extra);
  out[1] = type;
  out[2] = static_cast<uint8_t>(kBar);
  store_le(std::span(out).subspan(kCapOffset - 2, 4), offset);
  store_le(std::span(out).subspan(kCapLength - 2, 4), length);
  return out;
}

// Field layout of the common configuration, for byte-granular accesses.
struct Field {
  uint32_t offset;
  uint32_t size;
};
constexpr std::array<Field, 18> kCommonFields{{
    {common_cfg::kDeviceFeatureSelect, 4}, {common_cfg::kDeviceFeature, 4},
    {common_cfg::kDriverFeatureSelect, 4}, {common_cfg::kDriverFeature, 4},
    {common_cfg::kConfigMsixVector, 2},    {common_cfg::kNumQueues, 2},
    {common_cfg::kDeviceStatus, 1},        {common_cfg::kConfigGeneration, 1},
    {common_cfg::kQueueSelect, 2},         {common_cfg::kQueueSize, 2},
    {common_cfg::kQueueMsixVector, 2},     {common_cfg::kQueueEnable, 2},
    {common_cfg::kQueueNotifyOff, 2},      {common_cfg::kQueueDesc, 8},
    {common_cfg::kQueueDriver, 8},         {common_cfg::kQueueDevice, 8},
    {common_cfg::kQueueNotifyData, 2},     {common_cfg::kQueueReset, 2},
}};

}  // namespace

Result<std::unique_ptr<VirtioPciDevice>> VirtioPciDevice::create(VirtioDevice& dev,
                                                                 const GuestMemory& mem,
                                                                 GsiRouter& router, IrqChip& chip,
                                                                 MetricsRegistry& metrics,
                                                                 VirtioPciOptions opt) {
  const std::string who = "virtio-pci " + std::string(dev.name());
  if (dev.num_queues() == 0 || dev.num_queues() > kMaxQueues)
    return fail(who + ": " + std::to_string(dev.num_queues()) + " queues (1.." +
                    std::to_string(kMaxQueues) + " supported)",
                EINVAL);
  if (dev.config_size() > kDeviceMaxSize)
    return fail(who + ": device config of " + std::to_string(dev.config_size()) + " bytes", EINVAL);
  if ((dev.features() & feature_bit(VIRTIO_F_VERSION_1)) == 0)
    return fail(who + ": the device does not offer VIRTIO_F_VERSION_1 (modern virtio-pci needs it)",
                EINVAL);
  const uint64_t offered = dev.features() & ~opt.features_off;
  std::unique_ptr<VirtioPciDevice> d(new VirtioPciDevice(
      dev, mem, router, chip, metrics, offered | feature_bit(VIRTIO_F_VERSION_1)));
  if (auto st = d->init(); !st) return std::unexpected(std::move(st.error()));
  return d;
}

VirtioPciDevice::VirtioPciDevice(VirtioDevice& dev, const GuestMemory& mem, GsiRouter& router,
                                 IrqChip& chip, MetricsRegistry& metrics, uint64_t offered)
    : dev_(dev), mem_(mem), chip_(chip), router_(router), metrics_(metrics), offered_(offered) {}

Status VirtioPciDevice::init() {
  const std::string who = "virtio-pci " + std::string(dev_.name());
  config_.set_vendor_id(kVirtioPciVendor);
  config_.set_device_id(static_cast<uint16_t>(kVirtioPciModernDeviceBase + dev_.device_id()));
  config_.set_revision_id(1);  // modern-only device (section 4.1.2.1)
  config_.set_subsystem(kVirtioPciVendor, 0x1100);
  switch (dev_.device_id()) {
    case kDeviceIdNet: config_.set_class_code(0x02, 0x00, 0x00); break;  // Ethernet
    case kDeviceIdBlock: config_.set_class_code(0x01, 0x80, 0x00); break;  // other storage
    default: config_.set_class_code(0xff, 0x00, 0x00); break;
  }
  config_.set_interrupt_pin(0);
  IOVIRT_CHECK_CTX(config_.add_bar(kBar, kBarSize, PciBarKind::Mem64), who + ": BAR");

  const uint16_t nq = dev_.num_queues();
  const auto common = cap_bytes(cap_type::kCommon, kCommonOffset, kCommonSize, 0);
  const auto isr = cap_bytes(cap_type::kIsr, kIsrOffset, kIsrSize, 0);
  const auto devcfg =
      cap_bytes(cap_type::kDevice, kDeviceOffset, std::max<uint32_t>(dev_.config_size(), 4), 0);
  auto notify = cap_bytes(cap_type::kNotify, kNotifyOffset, uint64_t{nq} * kNotifyMultiplier, 4);
  store_le(std::span(notify).subspan(kCapBodySize, 4), kNotifyMultiplier);
  const auto pcicfg = cap_bytes(cap_type::kPciCfg, 0, 0, 4);
  // pci_cfg_cap: bar, offset, length and data are the driver's to write (section 4.1.4.9).
  std::array<uint8_t, kCapBodySize + 4> pcicfg_mask{};
  pcicfg_mask[kCapBar - 2] = 0xff;
  std::fill_n(pcicfg_mask.begin() + (kCapOffset - 2), 8, uint8_t{0xff});
  std::fill_n(pcicfg_mask.begin() + (kPciCfgData - 2), 4, uint8_t{0xff});
  for (const std::vector<uint8_t>* body : {&common, &isr, &devcfg, static_cast<const std::vector<uint8_t>*>(&notify)}) {
    auto off = config_.add_capability(PciCapId::VendorSpecific, *body);
    if (!off) return fail(who + ": " + off.error().message(), EINVAL);
  }
  auto cfgoff = config_.add_capability(PciCapId::VendorSpecific, pcicfg, pcicfg_mask);
  if (!cfgoff) return fail(who + ": " + cfgoff.error().message(), EINVAL);
  pci_cfg_cap_ = *cfgoff;

  const auto nvec = static_cast<uint16_t>(nq + 1);
  auto table = MsixTable::create(
      config_, MsixLayout{nvec, static_cast<uint8_t>(kBar), static_cast<uint32_t>(kMsixTableOffset),
                          static_cast<uint8_t>(kBar), static_cast<uint32_t>(kMsixPbaOffset)});
  if (!table) return fail(who + ": MSI-X: " + table.error().message(), EINVAL);
  msix_table_.emplace(std::move(*table));
  auto msix = MsixInterrupts::create(*msix_table_, router_, chip_, metrics_, std::string(dev_.name()));
  if (!msix) return std::unexpected(std::move(msix.error()));
  msix_ = std::move(*msix);

  queue_vectors_ = std::make_unique<std::atomic<uint16_t>[]>(nq);
  for (uint16_t q = 0; q < nq; ++q) {
    auto vq = Virtqueue::create(dev_.queue_max_size());
    if (!vq) return fail(who + ": queue " + std::to_string(q) + ": " + vq.error().message(), EINVAL);
    queues_.push_back(std::move(*vq));
    auto kick = EventFd::create();
    if (!kick) return std::unexpected(std::move(kick.error()));
    kicks_.push_back(std::move(*kick));
    QueueRegs r;
    r.size = dev_.queue_max_size();
    regs_.push_back(r);
    queue_vectors_[q].store(kNoVector);
  }
  doorbell_live_.assign(nq, false);
  device_failures_ = &metrics_.counter("iovirt_virtio_device_failures_total",
                                       "Times a device entered DEVICE_NEEDS_RESET",
                                       {{"device", std::string(dev_.name())}});
  return {};
}

VirtioPciDevice::~VirtioPciDevice() {
  std::lock_guard lock(mu_);
  dev_.reset();
  active_ = false;
  place_doorbells(std::nullopt);
}

bool VirtioPciDevice::ioeventfd_live(uint16_t q) const {
  return q < doorbell_live_.size() && doorbell_live_[q];
}

// ---------------------------------------------------------------------------------------------
// config space

void VirtioPciDevice::config_read(uint16_t offset, std::span<uint8_t> data) {
  const uint16_t win = static_cast<uint16_t>(pci_cfg_cap_ + kPciCfgData);
  if (pci_cfg_cap_ != 0 && offset >= win && offset + data.size() <= win + 4u) {
    // VIRTIO_PCI_CAP_PCI_CFG: a BAR access through config space (section 4.1.4.9). The window's
    // registers are written under the MSI-X lock (config_write), so read them under it too.
    auto lock = msix_->lock();
    const uint8_t bar = config_.peek8(static_cast<uint16_t>(pci_cfg_cap_ + kCapBar));
    const uint32_t off = config_.peek32(static_cast<uint16_t>(pci_cfg_cap_ + kCapOffset));
    const uint32_t len = config_.peek32(static_cast<uint16_t>(pci_cfg_cap_ + kCapLength));
    std::array<uint8_t, 4> window{};
    if (bar == kBar && (len == 1 || len == 2 || len == 4) && off % len == 0)
      bar_read(kBar, off, std::span(window).first(len));
    std::memcpy(data.data(), window.data() + (offset - win), data.size());
    return;
  }
  auto lock = msix_->lock();
  config_.read(offset, data);
}

void VirtioPciDevice::config_write(uint16_t offset, std::span<const uint8_t> data) {
  const uint16_t win = static_cast<uint16_t>(pci_cfg_cap_ + kPciCfgData);
  if (pci_cfg_cap_ != 0 && offset >= win && offset + data.size() <= win + 4u) {
    auto lock = msix_->lock();
    const uint8_t bar = config_.peek8(static_cast<uint16_t>(pci_cfg_cap_ + kCapBar));
    const uint32_t off = config_.peek32(static_cast<uint16_t>(pci_cfg_cap_ + kCapOffset));
    const uint32_t len = config_.peek32(static_cast<uint16_t>(pci_cfg_cap_ + kCapLength));
    // The access is as wide as cap.length; the data written must cover it.
    if (bar == kBar && (len == 1 || len == 2 || len == 4) && off % len == 0 && offset == win &&
        data.size() >= len)
      bar_write(kBar, off, data.first(len));
    return;
  }
  auto lock = msix_->lock();
  config_.write(offset, data);
  msix_table_->config_written(config_, offset, data.size());
}

// ---------------------------------------------------------------------------------------------
// BAR

void VirtioPciDevice::bar_read(int bar, uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), 0);
  if (bar != kBar) return;
  bar_access(offset, data, {}, false);
}

void VirtioPciDevice::bar_write(int bar, uint64_t offset, std::span<const uint8_t> data) {
  if (bar != kBar) return;
  bar_access(offset, {}, data, true);
}

void VirtioPciDevice::bar_access(uint64_t offset, std::span<uint8_t> rdata,
                                 std::span<const uint8_t> wdata, bool write) {
  const uint64_t len = write ? wdata.size() : rdata.size();
  auto inside = [&](uint64_t base, uint64_t size) {
    return offset >= base && offset - base < size && len <= size - (offset - base);
  };
  if (inside(kCommonOffset, kCommonSize)) {
    std::lock_guard lock(mu_);
    if (write)
      common_write(offset - kCommonOffset, wdata);
    else
      common_read(offset - kCommonOffset, rdata);
  } else if (inside(kIsrOffset, kIsrSize)) {
    // Reading ISR status clears it (section 4.1.4.5).
    if (!write) rdata[0] = isr_.exchange(0, std::memory_order_acq_rel);
  } else if (inside(kDeviceOffset, dev_.config_size())) {
    std::lock_guard lock(mu_);
    const auto off = static_cast<uint32_t>(offset - kDeviceOffset);
    if (write)
      dev_.write_config(off, wdata);
    else
      dev_.read_config(off, rdata);
  } else if (inside(kNotifyOffset, uint64_t{dev_.num_queues()} * kNotifyMultiplier)) {
    // Reached only when the queue's ioeventfd is not live: signal the same eventfd.
    if (write) (void)kicks_[(offset - kNotifyOffset) / kNotifyMultiplier].write(1);
  } else if (offset >= kMsixTableOffset) {
    auto lock = msix_->lock();
    if (write)
      (void)msix_table_->bar_write(kBar, offset, wdata);
    else
      (void)msix_table_->bar_read(kBar, offset, rdata);
  }
}

// ---------------------------------------------------------------------------------------------
// common configuration (section 4.1.4.3)

void VirtioPciDevice::snapshot_common(std::array<uint8_t, kCommonSize>& r) {
  r.fill(0);
  auto put = [&](uint32_t off, uint32_t size, uint64_t v) {
    store_le(std::span(r).subspan(off, size), v);
  };
  const uint64_t dsel = device_feature_select_;
  put(common_cfg::kDeviceFeatureSelect, 4, dsel);
  put(common_cfg::kDeviceFeature, 4, dsel < 2 ? (offered_ >> (32 * dsel)) & 0xffffffffu : 0);
  put(common_cfg::kDriverFeatureSelect, 4, driver_feature_select_);
  put(common_cfg::kDriverFeature, 4,
      driver_feature_select_ < 2 ? (driver_features_ >> (32 * driver_feature_select_)) & 0xffffffffu
                                 : 0);
  put(common_cfg::kConfigMsixVector, 2, config_vector_.load());
  put(common_cfg::kNumQueues, 2, dev_.num_queues());
  put(common_cfg::kDeviceStatus, 1, status_.load());
  put(common_cfg::kConfigGeneration, 1, config_generation_.load());
  put(common_cfg::kQueueSelect, 2, queue_select_);
  if (queue_select_ < regs_.size()) {
    const QueueRegs& q = regs_[queue_select_];
    put(common_cfg::kQueueSize, 2, q.size);
    put(common_cfg::kQueueMsixVector, 2, q.msix_vector);
    put(common_cfg::kQueueEnable, 2, q.enabled ? 1 : 0);
    put(common_cfg::kQueueNotifyOff, 2, queue_select_);
    put(common_cfg::kQueueDesc, 8, q.desc);
    put(common_cfg::kQueueDriver, 8, q.driver);
    put(common_cfg::kQueueDevice, 8, q.device);
    put(common_cfg::kQueueNotifyData, 2, queue_select_);
  } else {
    // A queue that does not exist reads queue_size 0 (section 4.1.4.3.2).
    put(common_cfg::kQueueMsixVector, 2, kNoVector);
  }
}

void VirtioPciDevice::common_read(uint64_t offset, std::span<uint8_t> data) {
  std::array<uint8_t, kCommonSize> r;
  snapshot_common(r);
  std::memcpy(data.data(), r.data() + offset, data.size());
}

void VirtioPciDevice::common_write(uint64_t offset, std::span<const uint8_t> data) {
  // Byte-granular: the new value of every field the write touches is the old value with the
  // written bytes replaced (drivers write 64-bit addresses as two 32-bit halves).
  std::array<uint8_t, kCommonSize> r;
  snapshot_common(r);
  std::memcpy(r.data() + offset, data.data(), data.size());
  const uint64_t end = offset + data.size();
  for (const Field& f : kCommonFields) {
    if (f.offset >= end || f.offset + f.size <= offset) continue;
    write_common_field(f.offset, load_le(std::span<const uint8_t>(r).subspan(f.offset, f.size)));
  }
}

void VirtioPciDevice::write_common_field(uint32_t field, uint64_t v) {
  const uint16_t nvec = msix_->num_vectors();
  const uint8_t st = status_.load();
  const bool running = (st & status::kDriverOk) != 0;
  QueueRegs* q = queue_select_ < regs_.size() ? &regs_[queue_select_] : nullptr;
  switch (field) {
    case common_cfg::kDeviceFeatureSelect: device_feature_select_ = static_cast<uint32_t>(v); break;
    case common_cfg::kDriverFeatureSelect: driver_feature_select_ = static_cast<uint32_t>(v); break;
    case common_cfg::kDriverFeature:
      // Frozen once FEATURES_OK is set (section 3.1.1); other selects have no bits.
      if ((st & status::kFeaturesOk) == 0 && driver_feature_select_ < 2) {
        const unsigned shift = 32 * driver_feature_select_;
        driver_features_ = (driver_features_ & ~(uint64_t{0xffffffffu} << shift)) | (v << shift);
      }
      break;
    case common_cfg::kConfigMsixVector:
      // An unusable vector reads back NO_VECTOR (section 4.1.5.1.2).
      config_vector_.store(v < nvec ? static_cast<uint16_t>(v) : kNoVector);
      break;
    case common_cfg::kDeviceStatus: write_status(static_cast<uint8_t>(v)); break;
    case common_cfg::kQueueSelect: queue_select_ = static_cast<uint16_t>(v); break;
    case common_cfg::kQueueSize:
      if (q && !running) q->size = static_cast<uint16_t>(v);
      break;
    case common_cfg::kQueueMsixVector:
      // Frozen while the device runs like the other queue registers: a backend (kernel vhost)
      // holds the vector's irqfd from activation on.
      if (q && !running) {
        q->msix_vector = v < nvec ? static_cast<uint16_t>(v) : kNoVector;
        queue_vectors_[queue_select_].store(q->msix_vector, std::memory_order_release);
      }
      break;
    case common_cfg::kQueueEnable:
      // Only 1 may be written (section 4.1.4.3.2); disabling is queue_reset, not offered.
      if (q && !running && v == 1) q->enabled = true;
      break;
    case common_cfg::kQueueDesc:
      if (q && !running) q->desc = v;
      break;
    case common_cfg::kQueueDriver:
      if (q && !running) q->driver = v;
      break;
    case common_cfg::kQueueDevice:
      if (q && !running) q->device = v;
      break;
    default: break;  // read-only fields; queue_reset without VIRTIO_F_RING_RESET
  }
}

void VirtioPciDevice::write_status(uint8_t v) {
  if (v == 0) {
    reset_locked();
    return;
  }
  const uint8_t old = status_.load();
  const auto added = static_cast<uint8_t>(v & ~old);
  uint8_t next = static_cast<uint8_t>(old | v);  // bits are only cleared by a reset
  if (added & status::kFeaturesOk) {
    std::string why;
    if (driver_features_ & ~offered_)
      why = "driver accepted features " + hex(driver_features_ & ~offered_) + " that were not offered";
    else if ((driver_features_ & feature_bit(VIRTIO_F_VERSION_1)) == 0)
      why = "driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported)";
    else if (auto st = dev_.negotiate(driver_features_); !st)
      why = st.error().message();
    if (!why.empty()) {
      log_warn(std::string(dev_.name()) + ": refusing FEATURES_OK: " + why);
      next = static_cast<uint8_t>(next & ~status::kFeaturesOk);
    }
  }
  if ((added & status::kDriverOk) && !active_) {
    if ((next & status::kFeaturesOk) == 0) {
      log_warn(std::string(dev_.name()) + ": DRIVER_OK without FEATURES_OK; device needs reset");
      device_failures_->inc();
      next |= status::kDeviceNeedsReset;
      isr_.fetch_or(2);
    } else if (auto st = activate_locked(); !st) {
      log_error(std::string(dev_.name()) + ": " + st.error().message() + "; device needs reset");
      device_failures_->inc();
      next |= status::kDeviceNeedsReset;
      isr_.fetch_or(2);
    }
  }
  if ((added & status::kFailed) && active_) {
    log_warn(std::string(dev_.name()) + ": driver set FAILED; stopping the device");
    dev_.reset();
    active_ = false;
  }
  // Keep DEVICE_NEEDS_RESET set concurrently by fail_device().
  uint8_t cur = old;
  while (!status_.compare_exchange_weak(cur, static_cast<uint8_t>(next | cur))) {
  }
  if ((next & status::kDeviceNeedsReset) && !(old & status::kDeviceNeedsReset)) {
    const uint16_t vec = config_vector_.load();
    if (vec != kNoVector) msix_->trigger(vec);
  }
}

void VirtioPciDevice::reset_locked() {
  // The device first: when reset() returns no backend thread touches a queue or kick fd.
  dev_.reset();
  active_ = false;
  for (size_t i = 0; i < queues_.size(); ++i) {
    queues_[i].reset();
    regs_[i] = QueueRegs{};
    regs_[i].size = dev_.queue_max_size();
    queue_vectors_[i].store(kNoVector);
    (void)kicks_[i].read();  // drop kicks of the old incarnation
  }
  driver_features_ = 0;
  device_feature_select_ = 0;
  driver_feature_select_ = 0;
  queue_select_ = 0;
  config_vector_.store(kNoVector);
  isr_.store(0);
  status_.store(0, std::memory_order_release);
}

Status VirtioPciDevice::activate_locked() {
  const uint64_t features = driver_features_;
  const bool packed = features & feature_bit(VIRTIO_F_RING_PACKED);
  ActivateContext ctx;
  ctx.mem = &mem_;
  ctx.features = features;
  ctx.irq = this;
  ctx.fail = [this](const std::string& reason) { fail_device(reason); };
  for (uint16_t i = 0; i < queues_.size(); ++i) {
    const QueueRegs& r = regs_[i];
    if (!r.enabled) continue;
    Virtqueue& q = queues_[i];
    const std::string where = "queue " + std::to_string(i) + ": ";
    IOVIRT_CHECK_CTX(q.set_format(packed ? RingFormat::Packed : RingFormat::Split), where + "format");
    IOVIRT_CHECK_CTX(q.set_size(r.size), where + "size");
    q.set_desc_area(r.desc);
    q.set_driver_area(r.driver);
    q.set_device_area(r.device);
    q.set_event_idx(features & feature_bit(VIRTIO_F_EVENT_IDX));
    q.set_in_order(features & feature_bit(VIRTIO_F_IN_ORDER));
    q.set_indirect(features & feature_bit(VIRTIO_F_INDIRECT_DESC));
    q.set_ready(true);
    IOVIRT_CHECK_CTX(q.validate(mem_), where + "rings");
    ctx.queues.push_back(QueueBinding{i, &q, kicks_[i].fd()});
  }
  IOVIRT_CHECK_CTX(dev_.activate(std::move(ctx)), "activate");
  active_ = true;
  log_debug(std::string(dev_.name()) + ": driver ready, features " + hex(features));
  return {};
}

// ---------------------------------------------------------------------------------------------
// interrupts (device threads)

void VirtioPciDevice::notify_queue(uint16_t q) {
  if (q >= regs_.size()) return;
  const uint16_t vec = queue_vectors_[q].load(std::memory_order_acquire);
  if (vec != kNoVector) msix_->trigger(vec);
}

void VirtioPciDevice::notify_config() {
  config_generation_.fetch_add(1, std::memory_order_acq_rel);
  isr_.fetch_or(2, std::memory_order_acq_rel);
  const uint16_t vec = config_vector_.load(std::memory_order_acquire);
  if (vec != kNoVector) msix_->trigger(vec);
}

int VirtioPciDevice::queue_irqfd(uint16_t q) {
  if (q >= regs_.size()) return -1;
  const uint16_t vec = queue_vectors_[q].load(std::memory_order_acquire);
  return vec == kNoVector ? -1 : msix_->notifier(vec);
}

void VirtioPciDevice::fail_device(const std::string& reason) {
  const uint8_t old = status_.fetch_or(status::kDeviceNeedsReset, std::memory_order_acq_rel);
  if (old & status::kDeviceNeedsReset) return;
  log_error(std::string(dev_.name()) + ": " + reason + "; device needs reset (the VM keeps running)");
  device_failures_->inc();
  isr_.fetch_or(2, std::memory_order_acq_rel);
  const uint16_t vec = config_vector_.load(std::memory_order_acquire);
  if (vec != kNoVector) msix_->trigger(vec);
}

// ---------------------------------------------------------------------------------------------
// doorbells

void VirtioPciDevice::bar_decode_changed(int bar, std::optional<uint64_t> address) {
  if (bar != kBar) return;
  std::lock_guard lock(mu_);
  place_doorbells(address);
}

void VirtioPciDevice::place_doorbells(std::optional<uint64_t> base) {
  if (doorbell_base_ == base) return;
  for (uint16_t q = 0; q < kicks_.size(); ++q) {
    if (doorbell_live_[q]) {
      const IoEventFdSpec spec{.addr = *doorbell_base_ + kNotifyOffset + uint64_t{q} * kNotifyMultiplier};
      if (auto st = chip_.unregister_ioeventfd(kicks_[q].fd(), spec); !st)
        log_warn(std::string(dev_.name()) + ": queue " + std::to_string(q) + ": " +
                 st.error().message());
      doorbell_live_[q] = false;
    }
  }
  doorbell_base_ = base;
  if (!base) return;
  for (uint16_t q = 0; q < kicks_.size(); ++q) {
    // len 0: any write width matches (drivers write 16 bits, with NOTIFICATION_DATA 32).
    const IoEventFdSpec spec{.addr = *base + kNotifyOffset + uint64_t{q} * kNotifyMultiplier};
    if (auto st = chip_.register_ioeventfd(kicks_[q].fd(), spec); !st) {
      log_warn(std::string(dev_.name()) + ": queue " + std::to_string(q) +
               ": doorbell stays on the exit path: " + st.error().message());
      continue;
    }
    doorbell_live_[q] = true;
  }
}

}  // namespace iovirt::virtio
