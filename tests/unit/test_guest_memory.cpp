#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "iovirt/core/guest_memory.hpp"

namespace iovirt {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kMiB = 1ull << 20;

// Two adjacent regions [0, 1M) and [1M, 2M), a gap, then [4M, 5M).
GuestMemory make_memory() {
  const RegionSpec specs[] = {{0, kMiB}, {kMiB, kMiB}, {4 * kMiB, kMiB}};
  auto m = GuestMemory::create(specs);
  EXPECT_TRUE(m.has_value()) << m.error().message();
  return std::move(*m);
}

TEST(GuestMemoryCreate, RegionsAreSortedByGpaAndSized) {
  const RegionSpec specs[] = {{4 * kMiB, kMiB}, {0, 2 * kMiB}};

  auto m = GuestMemory::create(specs);

  ASSERT_TRUE(m.has_value()) << m.error().message();
  ASSERT_EQ(m->regions().size(), 2u);
  EXPECT_EQ(m->regions()[0].gpa, 0u);
  EXPECT_EQ(m->regions()[0].size, 2 * kMiB);
  EXPECT_EQ(m->regions()[1].gpa, 4 * kMiB);
  EXPECT_EQ(m->total_size(), 3 * kMiB);
  for (const GuestRegion& r : m->regions()) {
    EXPECT_NE(r.host, nullptr);
    EXPECT_GE(r.fd, 0);
    EXPECT_EQ(r.fd_offset, 0u);
  }
}

TEST(GuestMemoryCreate, RefusesEmptyRegionList) {
  auto m = GuestMemory::create({});

  ASSERT_FALSE(m.has_value());
  EXPECT_NE(m.error().message().find("no regions"), std::string::npos);
}

TEST(GuestMemoryCreate, RefusesZeroSizeRegion) {
  const RegionSpec specs[] = {{0, 0}};

  auto m = GuestMemory::create(specs);

  ASSERT_FALSE(m.has_value());
  EXPECT_NE(m.error().message().find("zero size"), std::string::npos) << m.error().message();
}

TEST(GuestMemoryCreate, RefusesSizeNotMultipleOf4K) {
  const RegionSpec specs[] = {{0, kPage + 1}};

  auto m = GuestMemory::create(specs);

  ASSERT_FALSE(m.has_value());
  EXPECT_NE(m.error().message().find("4 KiB"), std::string::npos) << m.error().message();
}

TEST(GuestMemoryCreate, RefusesUnalignedGpa) {
  const RegionSpec specs[] = {{0x800, kPage}};

  auto m = GuestMemory::create(specs);

  ASSERT_FALSE(m.has_value());
  EXPECT_NE(m.error().message().find("aligned"), std::string::npos) << m.error().message();
}

TEST(GuestMemoryCreate, RefusesHugetlbSizeNotMultipleOf2M) {
  const RegionSpec specs[] = {{0, kMiB}};

  auto m = GuestMemory::create(specs, MemoryBacking::Hugetlb);

  ASSERT_FALSE(m.has_value());
  EXPECT_NE(m.error().message().find("2 MiB"), std::string::npos) << m.error().message();
}

TEST(GuestMemoryCreate, RefusesRegionWrappingPastTopOfAddressSpace) {
  const RegionSpec specs[] = {{0ull - 2 * kPage, 4 * kPage}};

  auto m = GuestMemory::create(specs);

  ASSERT_FALSE(m.has_value());
  EXPECT_NE(m.error().message().find("wraps"), std::string::npos) << m.error().message();
}

TEST(GuestMemoryCreate, RefusesRegionEndingExactlyAt2To64) {
  const RegionSpec specs[] = {{0ull - kPage, kPage}};

  auto m = GuestMemory::create(specs);

  EXPECT_FALSE(m.has_value());
}

TEST(GuestMemoryCreate, RefusesOverlappingRegions) {
  const RegionSpec specs[] = {{0, 2 * kMiB}, {kMiB, kMiB}};

  auto m = GuestMemory::create(specs);

  ASSERT_FALSE(m.has_value());
  EXPECT_NE(m.error().message().find("overlaps"), std::string::npos) << m.error().message();
}

TEST(GuestMemoryCreate, RefusesOverlapGivenOutOfOrder) {
  const RegionSpec specs[] = {{8 * kMiB, kMiB}, {0, kMiB}, {8 * kMiB + kMiB / 2, kMiB}};

  auto m = GuestMemory::create(specs);

  EXPECT_FALSE(m.has_value());
}

TEST(GuestMemoryCreate, HugetlbWithoutHugePagesSaysHowToFix) {
  std::ifstream f("/proc/sys/vm/nr_hugepages");
  long pages = 0;
  f >> pages;
  if (pages > 0)
    GTEST_SKIP() << "this host has huge pages reserved; the failure path is not reachable";
  const RegionSpec specs[] = {{0, 2 * kMiB}};

  auto m = GuestMemory::create(specs, MemoryBacking::Hugetlb);

  ASSERT_FALSE(m.has_value());
  EXPECT_NE(m.error().message().find("nr_hugepages"), std::string::npos) << m.error().message();
}

TEST(GuestMemorySpan, WholeRegionIsAccessible) {
  auto m = make_memory();

  auto s = m.span(0, kMiB);

  ASSERT_TRUE(s.has_value()) << s.error().message();
  EXPECT_EQ(s->data(), m.regions()[0].host);
  EXPECT_EQ(s->size(), kMiB);
}

TEST(GuestMemorySpan, LastByteOfRegionIsAccessible) {
  auto m = make_memory();

  auto s = m.span(5 * kMiB - 1, 1);

  ASSERT_TRUE(s.has_value()) << s.error().message();
  EXPECT_EQ(s->data(), m.regions()[2].host + kMiB - 1);
}

TEST(GuestMemorySpan, OneByteTooLongPastRegionEndIsRefused) {
  auto m = make_memory();

  auto s = m.span(5 * kMiB - 1, 2);

  ASSERT_FALSE(s.has_value());
  EXPECT_NE(s.error().message().find("0x4fffff"), std::string::npos) << s.error().message();
  EXPECT_NE(s.error().message().find("len 0x2"), std::string::npos) << s.error().message();
}

TEST(GuestMemorySpan, FirstByteAfterLastRegionIsRefused) {
  auto m = make_memory();

  EXPECT_FALSE(m.span(5 * kMiB, 1).has_value());
}

TEST(GuestMemorySpan, ZeroLengthInsideRegionSucceeds) {
  auto m = make_memory();

  auto s = m.span(4 * kMiB + 17, 0);

  ASSERT_TRUE(s.has_value());
  EXPECT_TRUE(s->empty());
}

TEST(GuestMemorySpan, ZeroLengthOnLastByteSucceeds) {
  auto m = make_memory();

  EXPECT_TRUE(m.span(5 * kMiB - 1, 0).has_value());
}

TEST(GuestMemorySpan, ZeroLengthAtRegionEndIsRefused) {
  auto m = make_memory();

  EXPECT_FALSE(m.span(5 * kMiB, 0).has_value());
}

TEST(GuestMemorySpan, ZeroLengthOutsideAnyRegionIsRefused) {
  auto m = make_memory();

  EXPECT_FALSE(m.span(3 * kMiB, 0).has_value());
}

TEST(GuestMemorySpan, GapBetweenRegionsIsRefused) {
  auto m = make_memory();

  auto s = m.span(2 * kMiB, 16);

  ASSERT_FALSE(s.has_value());
  EXPECT_NE(s.error().message().find("gpa 0x200000 len 0x10"), std::string::npos)
      << s.error().message();
}

TEST(GuestMemorySpan, RangeRunningFromRegionIntoGapIsRefused) {
  auto m = make_memory();

  EXPECT_FALSE(m.span(2 * kMiB - 8, 16).has_value());
}

TEST(GuestMemorySpan, RangeStraddlingTwoAdjacentRegionsIsRefused) {
  auto m = make_memory();

  auto s = m.span(kMiB - 4, 8);

  ASSERT_FALSE(s.has_value());
  EXPECT_NE(s.error().message().find("region"), std::string::npos) << s.error().message();
}

TEST(GuestMemorySpan, EachSideOfAdjacentRegionBoundaryIsAccessible) {
  auto m = make_memory();

  auto below = m.span(kMiB - 4, 4);
  auto above = m.span(kMiB, 4);

  ASSERT_TRUE(below.has_value());
  ASSERT_TRUE(above.has_value());
  EXPECT_EQ(above->data(), m.regions()[1].host);
}

TEST(GuestMemorySpan, LengthWrappingAroundAddressSpaceIsRefused) {
  auto m = make_memory();

  auto s = m.span(kPage, UINT64_MAX);

  ASSERT_FALSE(s.has_value());
  EXPECT_NE(s.error().message().find("wraps"), std::string::npos) << s.error().message();
}

TEST(GuestMemorySpan, AddressNearTopOfAddressSpaceIsRefused) {
  auto m = make_memory();

  EXPECT_FALSE(m.span(UINT64_MAX, 1).has_value());
  EXPECT_FALSE(m.span(UINT64_MAX - 7, 16).has_value());
  EXPECT_FALSE(m.span(UINT64_MAX, 0).has_value());
}

TEST(GuestMemorySpan, HugeLengthFromValidAddressIsRefused) {
  auto m = make_memory();

  EXPECT_FALSE(m.span(0, UINT64_MAX).has_value());
  EXPECT_FALSE(m.span(kMiB - 1, UINT64_MAX - kMiB + 2).has_value());
}

TEST(GuestMemoryHostPtr, MatchesRegionMapping) {
  auto m = make_memory();

  auto p = m.host_ptr(kMiB + 0x123, 4);

  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(*p, m.regions()[1].host + 0x123);
}

TEST(GuestMemoryFindRegion, FindsContainingRegionOrNull) {
  auto m = make_memory();

  EXPECT_EQ(m.find_region(0), &m.regions()[0]);
  EXPECT_EQ(m.find_region(kMiB - 1), &m.regions()[0]);
  EXPECT_EQ(m.find_region(kMiB), &m.regions()[1]);
  EXPECT_EQ(m.find_region(3 * kMiB), nullptr);
  EXPECT_EQ(m.find_region(5 * kMiB - 1), &m.regions()[2]);
  EXPECT_EQ(m.find_region(5 * kMiB), nullptr);
  EXPECT_EQ(m.find_region(UINT64_MAX), nullptr);
}

TEST(GuestMemoryAccess, WriteThenReadRoundTrips) {
  auto m = make_memory();
  const std::vector<uint8_t> in = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  std::vector<uint8_t> out(in.size());

  ASSERT_TRUE(m.write(4 * kMiB + 100, in).has_value());
  ASSERT_TRUE(m.read(4 * kMiB + 100, out).has_value());

  EXPECT_EQ(out, in);
}

TEST(GuestMemoryAccess, RefusedWriteLeavesMemoryUntouched) {
  auto m = make_memory();
  const std::vector<uint8_t> in(8, 0xaa);

  auto s = m.write(kMiB - 4, in);

  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(m.regions()[0].host[kMiB - 1], 0);
  EXPECT_EQ(m.regions()[1].host[0], 0);
}

TEST(GuestMemoryAccess, ReadOutsideRamIsRefused) {
  auto m = make_memory();
  std::array<uint8_t, 4> out{};

  EXPECT_FALSE(m.read(3 * kMiB, out).has_value());
}

TEST(GuestMemoryAccess, WrittenBytesAreVisibleThroughRegionFd) {
  auto m = make_memory();
  const std::vector<uint8_t> in = {0xde, 0xad, 0xbe, 0xef};
  ASSERT_TRUE(m.write(kMiB + kPage + 8, in).has_value());
  const GuestRegion& r = m.regions()[1];

  void* p = ::mmap(nullptr, r.size, PROT_READ | PROT_WRITE, MAP_SHARED, r.fd,
                   static_cast<off_t>(r.fd_offset));
  ASSERT_NE(p, MAP_FAILED);
  auto* other = static_cast<uint8_t*>(p);

  EXPECT_EQ(other[kPage + 8], 0xde);
  EXPECT_EQ(other[kPage + 11], 0xef);
  other[0] = 0x5a;  // and the other way round
  auto back = m.read_obj<uint8_t>(kMiB);
  ::munmap(p, r.size);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(*back, 0x5a);
}

struct Desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};

TEST(GuestMemoryAccess, ObjectRoundTripsAtUnalignedAddress) {
  auto m = make_memory();
  const Desc d{0x1122334455667788, 0x99, 3, 7};

  ASSERT_TRUE(m.write_obj(4 * kMiB + 3, d).has_value());
  auto back = m.read_obj<Desc>(4 * kMiB + 3);

  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->addr, d.addr);
  EXPECT_EQ(back->len, d.len);
  EXPECT_EQ(back->flags, d.flags);
  EXPECT_EQ(back->next, d.next);
}

TEST(GuestMemoryAccess, ObjectCrossingRegionEndIsRefused) {
  auto m = make_memory();

  EXPECT_FALSE(m.read_obj<uint64_t>(5 * kMiB - 4).has_value());
  EXPECT_FALSE(m.write_obj<uint32_t>(2 * kMiB - 2, 1u).has_value());
  EXPECT_TRUE(m.read_obj<uint64_t>(5 * kMiB - 8).has_value());
}

TEST(GuestMemoryLifetime, MoveTransfersRegions) {
  auto m = make_memory();
  ASSERT_TRUE(m.write_obj<uint32_t>(0, 42u).has_value());

  GuestMemory moved = std::move(m);

  EXPECT_EQ(moved.regions().size(), 3u);
  EXPECT_EQ(*moved.read_obj<uint32_t>(0), 42u);
  EXPECT_TRUE(m.regions().empty());  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_FALSE(m.span(0, 0).has_value());
}

}  // namespace
}  // namespace iovirt

namespace iovirt {
namespace {

// Guest RAM is mapped 2 MiB-aligned so that the host can back it with transparent huge pages
// (shmem only uses them for aligned mappings).
TEST(GuestMemoryThp, MemfdRegionsAreMappedTwoMegabyteAligned) {
  const RegionSpec specs[] = {{0, 6ull << 20}, {1ull << 32, 2ull << 20}};

  auto mem = GuestMemory::create(specs);

  ASSERT_TRUE(mem.has_value()) << mem.error().message();
  for (const auto& r : mem->regions())
    EXPECT_EQ(reinterpret_cast<uintptr_t>(r.host) % GuestMemory::kHugePageSize, 0u) << "region at " << r.gpa;
}

}  // namespace
}  // namespace iovirt

// GuestMemory::adopt: regions a peer (a vhost-user front-end) shares by fd.
namespace iovirt {
namespace {

size_t count_open_fds() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

Fd peer_memfd(uint64_t size) {
  Fd f(::memfd_create("peer-ram", MFD_CLOEXEC));
  EXPECT_TRUE(f.valid());
  EXPECT_EQ(::ftruncate(f.get(), static_cast<off_t>(size)), 0);
  return f;
}

std::vector<ExternalRegion> one_region(uint64_t gpa, uint64_t size, Fd fd, uint64_t offset) {
  std::vector<ExternalRegion> v;
  v.push_back(ExternalRegion{gpa, size, std::move(fd), offset});
  return v;
}

TEST(GuestMemoryAdopt, MapsThePeersBytesAtItsOffset) {
  Fd f = peer_memfd(2 * kMiB);
  const char hello[] = "from the peer";
  ASSERT_EQ(::pwrite(f.get(), hello, sizeof hello, 4096 + 16), static_cast<ssize_t>(sizeof hello));
  const int peer = ::dup(f.get());

  auto m = GuestMemory::adopt(one_region(kMiB, kMiB, std::move(f), 4096));

  ASSERT_TRUE(m.has_value()) << m.error().message();
  ASSERT_EQ(m->regions().size(), 1u);
  EXPECT_EQ(m->regions()[0].fd_offset, 4096u);
  char got[sizeof hello] = {};
  ASSERT_TRUE(m->read(kMiB + 16, std::span(reinterpret_cast<uint8_t*>(got), sizeof got)).has_value());
  EXPECT_STREQ(got, hello);
  ASSERT_TRUE(m->write_obj<uint32_t>(kMiB + 64, 0xfeedbeef).has_value());
  uint32_t back = 0;
  ASSERT_EQ(::pread(peer, &back, sizeof back, 4096 + 64), 4);
  EXPECT_EQ(back, 0xfeedbeefu);
  EXPECT_FALSE(m->span(2 * kMiB - 8, 16).has_value()) << "access past the adopted size";
  ::close(peer);
}

TEST(GuestMemoryAdopt, RefusesWhatAPeerMustNotGetAwayWith) {
  const size_t before = count_open_fds();
  auto refused = [](std::vector<ExternalRegion> v, const std::string& why) {
    auto m = GuestMemory::adopt(std::move(v));
    ASSERT_FALSE(m.has_value()) << why;
    EXPECT_NE(m.error().message().find(why), std::string::npos) << m.error().message();
  };
  refused({}, "no regions");
  refused(one_region(0, 0, peer_memfd(kMiB), 0), "zero size");
  refused(one_region(~0ull - 4095, 8192, peer_memfd(kMiB), 0), "wraps");
  refused(one_region(0, 4096, peer_memfd(kMiB), ~0ull - 100), "wraps");
  refused(one_region(0, 4096, peer_memfd(kMiB), 100), "not page-aligned");
  refused(one_region(0, 2 * kMiB, peer_memfd(kMiB), 0), "shorter than");
  refused(one_region(0, kMiB, peer_memfd(kMiB), 4096), "shorter than");
  refused(one_region(0, kMiB, Fd(), 0), "no file descriptor");
  {
    std::vector<ExternalRegion> v;
    v.push_back(ExternalRegion{0, kMiB, peer_memfd(kMiB), 0});
    v.push_back(ExternalRegion{kMiB - 4096, kMiB, peer_memfd(kMiB), 0});
    refused(std::move(v), "overlaps");
  }
  {
    int p[2];
    ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
    ::close(p[1]);
    refused(one_region(0, 4096, Fd(p[0]), 0), "mmap");  // not mappable
  }
  EXPECT_EQ(count_open_fds(), before) << "a refused region's fd stayed open";
}

TEST(GuestMemoryAdopt, ClosesTheFdsWhenDestroyed) {
  const size_t before = count_open_fds();
  {
    std::vector<ExternalRegion> v;
    v.push_back(ExternalRegion{0, kMiB, peer_memfd(kMiB), 0});
    v.push_back(ExternalRegion{1ull << 32, kMiB, peer_memfd(2 * kMiB), kMiB});
    auto m = GuestMemory::adopt(std::move(v));
    ASSERT_TRUE(m.has_value()) << m.error().message();
    EXPECT_EQ(m->regions()[1].gpa, 1ull << 32);
    EXPECT_EQ(count_open_fds(), before + 2);
  }
  EXPECT_EQ(count_open_fds(), before);
}

}  // namespace
}  // namespace iovirt
