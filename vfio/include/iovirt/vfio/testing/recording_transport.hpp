// Test doubles for the passthrough seams (header-only, unit tests only):
//  - RecordingTransport: a DeviceTransport over given config bytes, region infos and IRQ infos.
//    BAR regions are backed by a memfd, so region_read/region_write and map_region (a real shared
//    mmap of the same memfd) see the same bytes, as with a real device's BAR. Config writes are
//    applied to the config bytes and recorded; every IRQ call and reset is recorded.
//  - RecordingMemoryMapper: records map/unmap and refuses overlaps with guest RAM and other slots,
//    like KVM_SET_USER_MEMORY_REGION.
#pragma once

#include <linux/vfio.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/vfio/memory_mapper.hpp"
#include "iovirt/vfio/transport.hpp"

namespace iovirt::vfio::testing {

class RecordingTransport final : public DeviceTransport {
 public:
  struct IrqCall {
    enum class Kind { Eventfds, Disable, Unmask } kind;
    uint32_t index;
    uint32_t start;
    std::vector<int> fds;
  };
  struct ConfigWrite {
    uint64_t offset;
    std::vector<uint8_t> bytes;
  };

  // `config`: the device's config space (up to 4096 bytes; the config region has its size).
  explicit RecordingTransport(std::vector<uint8_t> config, std::string name = "0000:02:00.0")
      : name_(std::move(name)), config_(std::move(config)) {
    info_.flags = VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET;
    info_.num_regions = VFIO_PCI_NUM_REGIONS;
    info_.num_irqs = VFIO_PCI_NUM_IRQS;
  }
  ~RecordingTransport() override {
    for (auto& [index, r] : backing_) {
      if (r.view != nullptr) ::munmap(r.view, r.size);
      if (r.fd >= 0) ::close(r.fd);
    }
  }
  RecordingTransport(const RecordingTransport&) = delete;
  RecordingTransport& operator=(const RecordingTransport&) = delete;

  // --- setup ---
  void set_resettable(bool on) {
    info_.flags = on ? (info_.flags | VFIO_DEVICE_FLAGS_RESET)
                     : (info_.flags & ~uint32_t{VFIO_DEVICE_FLAGS_RESET});
  }
  // A BAR region of `size` bytes (a memfd), readable and writable; `mmap`: one area over the whole
  // region unless `areas` says otherwise.
  void add_bar(uint32_t index, uint64_t size, bool mmap, std::vector<MmapArea> areas = {}) {
    RegionInfo r;
    r.index = index;
    r.size = size;
    r.offset = uint64_t{index} << 40;
    r.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    if (mmap) {
      r.flags |= VFIO_REGION_INFO_FLAG_MMAP;
      r.mmap_areas = areas.empty() ? std::vector<MmapArea>{{0, size}} : std::move(areas);
    }
    regions_[index] = r;
    Backing b;
    b.size = std::max<uint64_t>(size, static_cast<uint64_t>(::sysconf(_SC_PAGESIZE)));
    b.fd = ::memfd_create("recording-bar", MFD_CLOEXEC);
    if (b.fd >= 0 && ::ftruncate(b.fd, static_cast<off_t>(b.size)) == 0) {
      void* v = ::mmap(nullptr, b.size, PROT_READ | PROT_WRITE, MAP_SHARED, b.fd, 0);
      b.view = v == MAP_FAILED ? nullptr : static_cast<uint8_t*>(v);
    }
    backing_[index] = b;
  }
  void set_irq_count(uint32_t index, uint32_t count) {
    irqs_[index] = IrqInfo{index, VFIO_IRQ_INFO_EVENTFD, count};
  }
  void fail_map_region(bool on) { fail_map_region_ = on; }
  // set_irq_eventfds on `index` fails (still recorded), as VFIO does when the host cannot get
  // the interrupt (e.g. an INTx line shared without DisINTx masking).
  void fail_irq(uint32_t index, bool on) { fail_irq_[index] = on; }
  // set_irq_unmask_eventfd fails (still recorded).
  void fail_unmask(bool on) { fail_unmask_ = on; }

  // --- inspection ---
  const std::vector<IrqCall>& irq_calls() const { return irq_calls_; }
  const std::vector<ConfigWrite>& config_writes() const { return config_writes_; }
  unsigned resets() const { return resets_; }
  std::span<uint8_t> bar_bytes(uint32_t index) {
    auto it = backing_.find(index);
    if (it == backing_.end() || it->second.view == nullptr) return {};
    return {it->second.view, it->second.size};
  }
  std::span<const uint8_t> config_bytes() const { return config_; }
  // A little-endian value of `size` bytes at `offset` of a BAR region (0 when out of range).
  uint64_t bar_value(uint32_t index, uint64_t offset, size_t size = 1) {
    std::array<uint8_t, 8> b{};
    if (size > b.size() || !region_read(index, offset, std::span(b).first(size))) return 0;
    uint64_t v = 0;
    for (size_t i = size; i-- > 0;) v = v << 8 | b[i];
    return v;
  }
  // Every map_region call: (index, offset, size).
  const std::vector<std::array<uint64_t, 3>>& map_calls() const { return map_calls_; }

  // --- DeviceTransport ---
  std::string_view name() const override { return name_; }
  Result<DeviceInfo> device_info() override { return info_; }
  Result<RegionInfo> region_info(uint32_t index) override {
    if (index == VFIO_PCI_CONFIG_REGION_INDEX) {
      RegionInfo r;
      r.index = index;
      r.size = config_.size();
      r.offset = uint64_t{index} << 40;
      r.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
      return r;
    }
    auto it = regions_.find(index);
    if (it != regions_.end()) return it->second;
    if (index >= VFIO_PCI_NUM_REGIONS) return fail("region " + std::to_string(index), EINVAL);
    RegionInfo r;
    r.index = index;
    return r;  // size 0: absent
  }
  Result<IrqInfo> irq_info(uint32_t index) override {
    auto it = irqs_.find(index);
    if (it != irqs_.end()) return it->second;
    if (index >= VFIO_PCI_NUM_IRQS) return fail("irq " + std::to_string(index), EINVAL);
    return IrqInfo{index, 0, 0};
  }
  Status region_read(uint32_t index, uint64_t offset, std::span<uint8_t> data) override {
    auto bytes = region_bytes(index);
    if (offset > bytes.size() || data.size() > bytes.size() - offset)
      return fail("region read out of range", EINVAL);
    std::memcpy(data.data(), bytes.data() + offset, data.size());
    return {};
  }
  Status region_write(uint32_t index, uint64_t offset, std::span<const uint8_t> data) override {
    auto bytes = region_bytes(index);
    if (offset > bytes.size() || data.size() > bytes.size() - offset)
      return fail("region write out of range", EINVAL);
    if (index == VFIO_PCI_CONFIG_REGION_INDEX)
      config_writes_.push_back({offset, std::vector<uint8_t>(data.begin(), data.end())});
    std::memcpy(bytes.data() + offset, data.data(), data.size());
    return {};
  }
  Result<RegionMapping> map_region(uint32_t index, uint64_t offset, uint64_t size) override {
    map_calls_.push_back({index, offset, size});
    if (fail_map_region_) return fail("mmap (injected failure)", ENOMEM);
    auto it = backing_.find(index);
    auto rit = regions_.find(index);
    if (it == backing_.end() || rit == regions_.end() || !rit->second.mappable())
      return fail("region " + std::to_string(index) + " is not mmap-able", EINVAL);
    const auto page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    if (offset % page != 0 || size % page != 0 || size == 0 || offset > rit->second.size ||
        size > rit->second.size - offset)
      return fail("map_region: bad range", EINVAL);
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, it->second.fd,
                     static_cast<off_t>(offset));
    if (p == MAP_FAILED) return fail_errno("mmap");
    return RegionMapping(p, size);
  }
  Status set_irq_eventfds(uint32_t index, uint32_t start, std::span<const int> fds) override {
    irq_calls_.push_back({IrqCall::Kind::Eventfds, index, start, {fds.begin(), fds.end()}});
    if (fail_irq_[index]) return fail("SET_IRQS trigger (injected failure)", EBUSY);
    auto it = irqs_.find(index);
    if (it == irqs_.end() || start + fds.size() > it->second.count)
      return fail("SET_IRQS: vectors out of range", EINVAL);
    return {};
  }
  Status disable_irq(uint32_t index) override {
    irq_calls_.push_back({IrqCall::Kind::Disable, index, 0, {}});
    return {};
  }
  Status set_irq_unmask_eventfd(uint32_t index, int fd) override {
    irq_calls_.push_back({IrqCall::Kind::Unmask, index, 0, {fd}});
    if (fail_unmask_) return fail("SET_IRQS unmask (injected failure)", EINVAL);
    return {};
  }
  Status reset() override {
    ++resets_;
    return {};
  }

 private:
  struct Backing {
    int fd = -1;
    uint8_t* view = nullptr;
    uint64_t size = 0;
  };
  std::span<uint8_t> region_bytes(uint32_t index) {
    if (index == VFIO_PCI_CONFIG_REGION_INDEX) return config_;
    auto it = backing_.find(index);
    auto rit = regions_.find(index);
    if (it == backing_.end() || it->second.view == nullptr || rit == regions_.end()) return {};
    return {it->second.view, rit->second.size};
  }

  std::string name_;
  std::vector<uint8_t> config_;
  DeviceInfo info_;
  std::map<uint32_t, RegionInfo> regions_;
  std::map<uint32_t, Backing> backing_;
  std::map<uint32_t, IrqInfo> irqs_;
  std::vector<IrqCall> irq_calls_;
  std::vector<ConfigWrite> config_writes_;
  std::vector<std::array<uint64_t, 3>> map_calls_;
  unsigned resets_ = 0;
  bool fail_map_region_ = false;
  std::map<uint32_t, bool> fail_irq_;
  bool fail_unmask_ = false;
};

class RecordingMemoryMapper final : public MemoryMapper {
 public:
  struct Mapping {
    uint64_t gpa;
    uint64_t size;
    void* host;
    std::string what;
  };

  // Guest RAM (or anything else already there) that maps must not overlap.
  void add_reserved(uint64_t gpa, uint64_t size) { reserved_.push_back({gpa, size, nullptr, "RAM"}); }

  Result<uint32_t> map(uint64_t gpa, uint64_t size, void* host, std::string_view what) override {
    ++map_calls_;
    const auto page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    if (gpa % page != 0 || size % page != 0 || size == 0 ||
        reinterpret_cast<uintptr_t>(host) % page != 0)
      return fail("map: unaligned", EINVAL);
    auto clash = [&](const Mapping& m) { return gpa < m.gpa + m.size && m.gpa < gpa + size; };
    if (std::any_of(reserved_.begin(), reserved_.end(), clash))
      return fail("map: overlaps guest RAM", EEXIST);
    for (const auto& [h, m] : live_)
      if (clash(m)) return fail("map: overlaps slot " + std::to_string(h), EEXIST);
    const uint32_t h = next_++;
    live_[h] = Mapping{gpa, size, host, std::string(what)};
    return h;
  }
  Status unmap(uint32_t handle) override {
    if (live_.erase(handle) == 0) return fail("unmap: no such slot", ENOENT);
    ++unmaps_;
    return {};
  }

  // Live mappings sorted by guest address.
  std::vector<Mapping> mappings() const {
    std::vector<Mapping> out;
    for (const auto& [h, m] : live_) out.push_back(m);
    std::sort(out.begin(), out.end(), [](const Mapping& a, const Mapping& b) { return a.gpa < b.gpa; });
    return out;
  }
  unsigned map_calls() const { return map_calls_; }
  unsigned unmaps() const { return unmaps_; }

 private:
  std::vector<Mapping> reserved_;
  std::map<uint32_t, Mapping> live_;
  uint32_t next_ = 1;
  unsigned map_calls_ = 0;
  unsigned unmaps_ = 0;
};

}  // namespace iovirt::vfio::testing
