// Guest physical memory: a few regions, each a memfd mapped MAP_SHARED, so the same pages can be
// handed to KVM (memslots), to VFIO (DMA map) and to other processes (vhost-user) by fd.
//
// Every guest-supplied address goes through span()/host_ptr()/read()/write(), which check the
// whole [gpa, gpa + len) against ONE region: guest addresses are hostile input, and two adjacent
// regions are still two separate mappings, so a range may not straddle them.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/fd.hpp"

namespace iovirt {

struct GuestRegion {
  uint64_t gpa;
  uint64_t size;
  uint8_t* host;       // start of the mapping in this process
  int fd;              // memfd backing the region, owned by GuestMemory
  uint64_t fd_offset;  // offset of `gpa` within fd (0 for create(), the peer's for adopt())
};

enum class MemoryBacking {
  Memfd,    // memfd_create: shmem, 4 KiB pages
  Hugetlb,  // memfd_create(MFD_HUGETLB | MFD_HUGE_2MB): needs preallocated 2 MiB huge pages
};

struct RegionSpec {
  uint64_t gpa;
  uint64_t size;
};

// A region another process shares by fd (a vhost-user front-end's SET_MEM_TABLE): `size` bytes of
// `fd` from `mmap_offset` on are the guest's [gpa, gpa + size).
struct ExternalRegion {
  uint64_t gpa;
  uint64_t size;
  Fd fd;
  uint64_t mmap_offset;
};

class GuestMemory final {
 public:
  static constexpr uint64_t kPageSize = 4096;
  static constexpr uint64_t kHugePageSize = 2ull << 20;

  // Regions may be given in any order; they are kept sorted by gpa. Refuses an empty list,
  // zero-size, overlapping or wrapping regions, and gpa/size not multiples of the page size.
  [[nodiscard]] static Result<GuestMemory> create(std::span<const RegionSpec> regions,
                                                  MemoryBacking backing = MemoryBacking::Memfd);

  // Maps fds a peer handed over (MAP_SHARED, read-write) and takes ownership of them. Everything
  // is peer-controlled, so it refuses an empty list, zero-size, wrapping or gpa-overlapping
  // regions, an mmap_offset that is not page-aligned (mmap needs it), a regular file (memfd,
  // hugetlbfs, /dev/shm) shorter than mmap_offset + size (touching past its end would be SIGBUS
  // in this process) and any fd mmap refuses. A peer that can still shrink its file after this
  // check (no F_SEAL_SHRINK) could SIGBUS us; that is logged as a warning per region.
  [[nodiscard]] static Result<GuestMemory> adopt(std::vector<ExternalRegion> regions);

  GuestMemory(GuestMemory&& o) noexcept;
  GuestMemory& operator=(GuestMemory&& o) noexcept;
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;
  ~GuestMemory();

  // Sorted by gpa.
  [[nodiscard]] std::span<const GuestRegion> regions() const { return regions_; }
  [[nodiscard]] uint64_t total_size() const { return total_size_; }
  [[nodiscard]] MemoryBacking backing() const { return backing_; }

  // Const means the region map is fixed; the guest's bytes are always writable through it.
  // len == 0 succeeds iff gpa lies inside a region.
  [[nodiscard]] Result<std::span<uint8_t>> span(uint64_t gpa, uint64_t len) const {
    // Fast path, inline: inside the first region (all of RAM below the PCI hole on most VMs,
    // every ring and buffer of a small one). Everything else, errors included, out of line.
    if (!regions_.empty()) {
      const GuestRegion& r = regions_.front();
      if (gpa >= r.gpa && gpa - r.gpa < r.size && len <= r.size - (gpa - r.gpa))
        return std::span<uint8_t>(r.host + (gpa - r.gpa), static_cast<size_t>(len));
    }
    return span_slow(gpa, len);
  }
  [[nodiscard]] Result<uint8_t*> host_ptr(uint64_t gpa, uint64_t len) const;
  Status read(uint64_t gpa, std::span<uint8_t> out) const;
  Status write(uint64_t gpa, std::span<const uint8_t> in) const;

  // Unaligned-safe copies of guest structures (virtio descriptors, boot params...).
  template <class T>
  [[nodiscard]] Result<T> read_obj(uint64_t gpa) const {
    static_assert(std::is_trivially_copyable_v<T>, "read_obj needs a trivially copyable type");
    auto s = span(gpa, sizeof(T));
    if (!s) return std::unexpected(std::move(s.error()));
    alignas(T) unsigned char buf[sizeof(T)];
    std::memcpy(buf, s->data(), sizeof(T));
    return std::bit_cast<T>(buf);
  }
  template <class T>
  Status write_obj(uint64_t gpa, const T& v) const {
    static_assert(std::is_trivially_copyable_v<T>, "write_obj needs a trivially copyable type");
    auto s = span(gpa, sizeof(T));
    if (!s) return std::unexpected(std::move(s.error()));
    std::memcpy(s->data(), &v, sizeof(T));
    return {};
  }

  // The region containing gpa, or nullptr. For consumers that translate addresses themselves
  // (vhost-user memory tables, VFIO DMA maps).
  [[nodiscard]] const GuestRegion* find_region(uint64_t gpa) const;

 private:
  [[nodiscard]] Result<std::span<uint8_t>> span_slow(uint64_t gpa, uint64_t len) const;
  GuestMemory(std::vector<GuestRegion> regions, MemoryBacking backing);
  void release();

  std::vector<GuestRegion> regions_;
  uint64_t total_size_ = 0;
  MemoryBacking backing_ = MemoryBacking::Memfd;
};

}  // namespace iovirt
