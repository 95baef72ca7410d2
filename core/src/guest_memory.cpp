#include "iovirt/core/guest_memory.hpp"

#include <fcntl.h>
#include <linux/memfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <string>

#include "iovirt/core/fd.hpp"
#include "iovirt/core/hex.hpp"
#include "iovirt/core/log.hpp"

namespace iovirt {

namespace {

// "gpa 0x1000 len 0x10": the form every access error uses.
std::string range_name(uint64_t gpa, uint64_t len) {
  return "gpa " + hex(gpa) + " len " + hex(len);
}

std::string region_name(uint64_t gpa, uint64_t size) {
  return "region [" + hex(gpa) + ", " + hex(gpa + size) + ")";
}

// Maps a shmem-backed memfd at a 2 MiB-aligned address and asks for transparent huge pages.
// Guest RAM is touched page by page as the guest first uses it; with 4 KiB pages every first
// touch is a fault in this process (and, nested, in every level below), with 2 MiB pages one in
// 512. shmem only uses huge pages when the mapping is 2 MiB-aligned and THP for shmem is enabled
// on the host (/sys/kernel/mm/transparent_hugepage/shmem_enabled: advise, within_size or always);
// where it is not, the madvise is a harmless no-op.
void* map_thp_aligned(int fd, uint64_t size) {
  const uint64_t align = GuestMemory::kHugePageSize;
  void* reserve = ::mmap(nullptr, size + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (reserve == MAP_FAILED) return MAP_FAILED;
  const auto base = reinterpret_cast<uintptr_t>(reserve);
  const uintptr_t aligned = (base + align - 1) & ~static_cast<uintptr_t>(align - 1);
  void* p = ::mmap(reinterpret_cast<void*>(aligned), size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
  if (p == MAP_FAILED) {
    int e = errno;
    ::munmap(reserve, size + align);
    errno = e;
    return MAP_FAILED;
  }
  // Give back the unused head and tail of the reservation.
  if (aligned > base) ::munmap(reserve, aligned - base);
  const uintptr_t end = aligned + size, reserve_end = base + size + align;
  if (reserve_end > end) ::munmap(reinterpret_cast<void*>(end), reserve_end - end);
  ::madvise(p, size, MADV_HUGEPAGE);
  return p;
}

// Maps one region. On failure nothing is left open or mapped.
Result<GuestRegion> map_region(const RegionSpec& spec, MemoryBacking backing) {
  const bool huge = backing == MemoryBacking::Hugetlb;
  const std::string what = "guest memory: " + region_name(spec.gpa, spec.size);
  const std::string name = "iovirt-ram@" + hex(spec.gpa);
  unsigned flags = MFD_CLOEXEC | MFD_ALLOW_SEALING;
  if (huge) flags |= MFD_HUGETLB | MFD_HUGE_2MB;
  Fd fd(::memfd_create(name.c_str(), flags));
  if (!fd) {
    if (huge)
      return fail_errno(what +
                        ": memfd_create(MFD_HUGETLB | MFD_HUGE_2MB)"
                        " (does the kernel have hugetlbfs with 2 MiB pages?)");
    return fail_errno(what + ": memfd_create");
  }
  if (::ftruncate(fd.get(), static_cast<off_t>(spec.size)) < 0)
    return fail_errno(what + ": ftruncate to " + hex(spec.size));
  // Whoever else gets this fd (a vhost-user backend) could otherwise shrink it under our
  // mapping and turn every guest access past the new end into SIGBUS in this process.
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
    return fail_errno(what + ": F_ADD_SEALS");
  void* p = huge ? ::mmap(nullptr, spec.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0)
                 : map_thp_aligned(fd.get(), spec.size);
  if (p == MAP_FAILED) {
    if (huge && errno == ENOMEM) {
      const uint64_t pages = spec.size / GuestMemory::kHugePageSize;
      return fail_errno(what + ": mmap: not enough free 2 MiB huge pages (this region needs " +
                        std::to_string(pages) +
                        "; see HugePages_Free in /proc/meminfo and reserve more with "
                        "'echo N > /proc/sys/vm/nr_hugepages' as root)");
    }
    return fail_errno(what + ": mmap");
  }
  return GuestRegion{spec.gpa, spec.size, static_cast<uint8_t*>(p), fd.release(), 0};
}

void unmap_region(const GuestRegion& r) {
  if (r.host != nullptr) ::munmap(r.host, r.size);
  if (r.fd >= 0) ::close(r.fd);
}

// `sorted` is ordered by gpa, so overlaps can only be between neighbours.
Status check_specs(const std::vector<RegionSpec>& sorted, MemoryBacking backing) {
  if (sorted.empty()) return fail("guest memory: no regions given");
  const bool huge = backing == MemoryBacking::Hugetlb;
  const uint64_t page = huge ? GuestMemory::kHugePageSize : GuestMemory::kPageSize;
  const char* page_name = huge ? "2 MiB (hugetlb)" : "4 KiB";
  for (const RegionSpec& s : sorted) {
    const std::string what = "guest memory: region at " + hex(s.gpa) + " size " + hex(s.size);
    if (s.size == 0) return fail(what + ": zero size");
    if (s.size % page != 0) return fail(what + ": size is not a multiple of " + page_name);
    if (s.gpa % page != 0) return fail(what + ": gpa is not aligned to " + page_name);
    // The end must be representable: a region ending exactly at 2^64 is refused too.
    if (s.gpa + s.size <= s.gpa) return fail(what + ": wraps past the end of the address space");
  }
  for (size_t i = 1; i < sorted.size(); ++i) {
    const RegionSpec& a = sorted[i - 1];
    const RegionSpec& b = sorted[i];
    if (a.gpa + a.size > b.gpa)
      return fail("guest memory: " + region_name(a.gpa, a.size) + " overlaps " +
                  region_name(b.gpa, b.size));
  }
  return {};
}

}  // namespace

Result<GuestMemory> GuestMemory::create(std::span<const RegionSpec> specs, MemoryBacking backing) {
  std::vector<RegionSpec> sorted(specs.begin(), specs.end());
  std::sort(sorted.begin(), sorted.end(),
            [](const RegionSpec& a, const RegionSpec& b) { return a.gpa < b.gpa; });
  if (auto s = check_specs(sorted, backing); !s) return std::unexpected(std::move(s.error()));
  std::vector<GuestRegion> regions;
  regions.reserve(sorted.size());
  for (const RegionSpec& spec : sorted) {
    auto r = map_region(spec, backing);
    if (!r) {
      for (const GuestRegion& done : regions) unmap_region(done);
      return std::unexpected(std::move(r.error()));
    }
    regions.push_back(*r);
  }
  return GuestMemory(std::move(regions), backing);
}

Result<GuestMemory> GuestMemory::adopt(std::vector<ExternalRegion> regions) {
  if (regions.empty()) return fail("guest memory: no regions given");
  std::sort(regions.begin(), regions.end(),
            [](const ExternalRegion& a, const ExternalRegion& b) { return a.gpa < b.gpa; });
  for (size_t i = 0; i < regions.size(); ++i) {
    const ExternalRegion& r = regions[i];
    const std::string what = "guest memory: shared region at " + hex(r.gpa) + " size " + hex(r.size);
    if (r.size == 0) return fail(what + ": zero size");
    if (r.gpa + r.size <= r.gpa) return fail(what + ": wraps past the end of the address space");
    if (r.mmap_offset + r.size <= r.mmap_offset)
      return fail(what + ": mmap_offset " + hex(r.mmap_offset) + " + size wraps");
    if (r.mmap_offset % kPageSize != 0)
      return fail(what + ": mmap_offset " + hex(r.mmap_offset) + " is not page-aligned");
    if (!r.fd) return fail(what + ": no file descriptor");
    if (i > 0 && regions[i - 1].gpa + regions[i - 1].size > r.gpa)
      return fail("guest memory: " + region_name(regions[i - 1].gpa, regions[i - 1].size) +
                  " overlaps " + region_name(r.gpa, r.size));
    struct stat st {};
    if (::fstat(r.fd.get(), &st) != 0) return fail_errno(what + ": fstat");
    if (S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) < r.mmap_offset + r.size)
      return fail(what + ": the file is " + hex(static_cast<uint64_t>(st.st_size)) +
                  " bytes, shorter than mmap_offset " + hex(r.mmap_offset) + " + size");
    if (S_ISREG(st.st_mode)) {
      const int seals = ::fcntl(r.fd.get(), F_GET_SEALS);
      if (seals < 0 || (seals & F_SEAL_SHRINK) == 0)
        log_warn(what + ": the peer can shrink the file under the mapping (no F_SEAL_SHRINK)");
    }
  }
  std::vector<GuestRegion> mapped;
  mapped.reserve(regions.size());
  for (ExternalRegion& r : regions) {
    void* p = ::mmap(nullptr, r.size, PROT_READ | PROT_WRITE, MAP_SHARED, r.fd.get(),
                     static_cast<off_t>(r.mmap_offset));
    if (p == MAP_FAILED) {
      auto err = fail_errno("guest memory: mmap shared " + region_name(r.gpa, r.size) +
                            " at offset " + hex(r.mmap_offset));
      for (const GuestRegion& done : mapped) unmap_region(done);
      return err;
    }
    mapped.push_back(GuestRegion{r.gpa, r.size, static_cast<uint8_t*>(p), r.fd.release(),
                                 r.mmap_offset});
  }
  return GuestMemory(std::move(mapped), MemoryBacking::Memfd);
}

GuestMemory::GuestMemory(std::vector<GuestRegion> regions, MemoryBacking backing)
    : regions_(std::move(regions)), backing_(backing) {
  for (const GuestRegion& r : regions_) total_size_ += r.size;
}

GuestMemory::GuestMemory(GuestMemory&& o) noexcept
    : regions_(std::exchange(o.regions_, {})),
      total_size_(std::exchange(o.total_size_, 0)),
      backing_(o.backing_) {}

GuestMemory& GuestMemory::operator=(GuestMemory&& o) noexcept {
  if (this != &o) {
    release();
    regions_ = std::exchange(o.regions_, {});
    total_size_ = std::exchange(o.total_size_, 0);
    backing_ = o.backing_;
  }
  return *this;
}

GuestMemory::~GuestMemory() {
  release();
}

void GuestMemory::release() {
  for (const GuestRegion& r : regions_) unmap_region(r);
  regions_.clear();
  total_size_ = 0;
}

const GuestRegion* GuestMemory::find_region(uint64_t gpa) const {
  // First region starting above gpa; the candidate is the one before it.
  auto it = std::upper_bound(regions_.begin(), regions_.end(), gpa,
                             [](uint64_t a, const GuestRegion& r) { return a < r.gpa; });
  if (it == regions_.begin()) return nullptr;
  --it;
  if (gpa - it->gpa >= it->size) return nullptr;
  return &*it;
}

Result<std::span<uint8_t>> GuestMemory::span_slow(uint64_t gpa, uint64_t len) const {
  const GuestRegion* r = find_region(gpa);
  if (r == nullptr) return fail("guest memory: " + range_name(gpa, len) + ": not in guest RAM");
  const uint64_t off = gpa - r->gpa;
  // Written as a subtraction so that a huge len cannot overflow the check itself.
  if (len > r->size - off) {
    if (gpa + len < gpa)
      return fail("guest memory: " + range_name(gpa, len) +
                  ": wraps past the end of the address space");
    return fail("guest memory: " + range_name(gpa, len) + ": runs past the end of " +
                region_name(r->gpa, r->size));
  }
  return std::span<uint8_t>(r->host + off, static_cast<size_t>(len));
}

Result<uint8_t*> GuestMemory::host_ptr(uint64_t gpa, uint64_t len) const {
  auto s = span(gpa, len);
  if (!s) return std::unexpected(std::move(s.error()));
  return s->data();
}

// The guest may be writing the same bytes concurrently; like every VMM we accept a torn copy,
// which is what the guest would see from a real device too.
Status GuestMemory::read(uint64_t gpa, std::span<uint8_t> out) const {
  auto s = span(gpa, out.size());
  if (!s) return std::unexpected(std::move(s.error()));
  if (!out.empty()) std::memcpy(out.data(), s->data(), out.size());
  return {};
}

Status GuestMemory::write(uint64_t gpa, std::span<const uint8_t> in) const {
  auto s = span(gpa, in.size());
  if (!s) return std::unexpected(std::move(s.error()));
  if (!in.empty()) std::memcpy(s->data(), in.data(), in.size());
  return {};
}

}  // namespace iovirt
