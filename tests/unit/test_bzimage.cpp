// bzImage parsing (untrusted file -> validated setup header) and the zero page built from it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "iovirt/vmm/bzimage.hpp"

namespace iovirt {
namespace {

using Bytes = std::vector<uint8_t>;

constexpr size_t kHeaderEnd = 0x268;  // what parse_bzimage reads at least
constexpr uint8_t kSetupSects = 4;
constexpr size_t kSetupBytes = (kSetupSects + 1) * 512;
constexpr size_t kKernelBytes = 4096;

template <class T>
void put(Bytes& b, size_t off, T v) {
  std::memcpy(b.data() + off, &v, sizeof v);
}
template <class T>
T get(const Bytes& b, size_t off) {
  T v;
  std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}

// A minimal well-formed 64-bit bzImage: setup (header included) followed by a kernel whose bytes
// are a recognisable pattern.
Bytes valid_image() {
  Bytes b(kSetupBytes + kKernelBytes, 0);
  b[0x1f1] = kSetupSects;
  put<uint16_t>(b, 0x1fe, 0xaa55);      // boot flag
  b[0x200] = 0xeb;                      // jmp short ...
  b[0x201] = 0x66;                      // ... past the header: it ends at 0x202 + 0x66 = 0x268
  put<uint32_t>(b, 0x202, 0x53726448);  // "HdrS"
  put<uint16_t>(b, 0x206, 0x020f);      // boot protocol 2.15
  b[0x211] = 0x01;                      // loadflags: LOADED_HIGH
  put<uint32_t>(b, 0x22c, 0x7fffffff);  // initrd_addr_max
  put<uint32_t>(b, 0x230, 0x200000);    // kernel_alignment
  put<uint16_t>(b, 0x236, 0x0001);      // xloadflags: XLF_KERNEL_64
  put<uint32_t>(b, 0x238, 2047);        // cmdline_size
  put<uint64_t>(b, 0x258, 0x1000000);   // pref_address
  put<uint32_t>(b, 0x260, 0x800000);    // init_size
  for (size_t i = 0; i < kKernelBytes; ++i) b[kSetupBytes + i] = static_cast<uint8_t>(i * 7 + 1);
  return b;
}

std::string parse_error(const Bytes& b) {
  auto r = parse_bzimage(b);
  return r ? std::string("(parsed)") : r.error().message();
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// ---- parse_bzimage: accepted images --------------------------------------------------------

TEST(ParseBzImage, ValidImageYieldsItsHeaderFields) {
  const Bytes b = valid_image();

  auto img = parse_bzimage(b);

  ASSERT_TRUE(img) << img.error().message();
  EXPECT_EQ(img->protocol, 0x020f);
  EXPECT_EQ(img->setup_sects, kSetupSects);
  EXPECT_EQ(img->loadflags, 0x01);
  EXPECT_EQ(img->xloadflags, 0x0001);
  EXPECT_EQ(img->initrd_addr_max, 0x7fffffffu);
  EXPECT_EQ(img->kernel_alignment, 0x200000u);
  EXPECT_EQ(img->cmdline_size, 2047u);
  EXPECT_EQ(img->init_size, 0x800000u);
  EXPECT_EQ(img->pref_address, 0x1000000u);
}

TEST(ParseBzImage, SplitsTheFileIntoSetupSectorsAndTheProtectedModeKernel) {
  const Bytes b = valid_image();

  auto img = parse_bzimage(b);

  ASSERT_TRUE(img) << img.error().message();
  ASSERT_EQ(img->setup.size(), kSetupBytes);
  ASSERT_EQ(img->kernel.size(), kKernelBytes);
  EXPECT_EQ(img->setup.data(), b.data());
  EXPECT_TRUE(std::equal(img->kernel.begin(), img->kernel.end(), b.begin() + kSetupBytes));
}

TEST(ParseBzImage, ZeroSetupSectsMeansFourAsTheBootProtocolSays) {
  Bytes b = valid_image();
  b[0x1f1] = 0;

  auto img = parse_bzimage(b);

  ASSERT_TRUE(img) << img.error().message();
  EXPECT_EQ(img->setup_sects, 4);
  EXPECT_EQ(img->setup.size(), 5u * 512);
}

TEST(ParseBzImage, InitSizeBelowTheKernelSizeIsRaisedToIt) {
  Bytes b = valid_image();
  put<uint32_t>(b, 0x260, 16);

  auto img = parse_bzimage(b);

  ASSERT_TRUE(img) << img.error().message();
  EXPECT_EQ(img->init_size, kKernelBytes);
}

TEST(ParseBzImage, ZeroCmdlineSizeMeansTheOldDefaultOf255) {
  Bytes b = valid_image();
  put<uint32_t>(b, 0x238, 0);

  auto img = parse_bzimage(b);

  ASSERT_TRUE(img) << img.error().message();
  EXPECT_EQ(img->cmdline_size, 255u);
}

TEST(ParseBzImage, OneKernelByteAfterTheSetupIsEnough) {
  Bytes b = valid_image();
  b.resize(kSetupBytes + 1);

  auto img = parse_bzimage(b);

  ASSERT_TRUE(img) << img.error().message();
  EXPECT_EQ(img->kernel.size(), 1u);
}

// ---- parse_bzimage: refusals ---------------------------------------------------------------

TEST(ParseBzImage, EmptyFileFailsNamingTheSize) {
  const std::string e = parse_error({});

  EXPECT_TRUE(contains(e, "not a bzImage")) << e;
  EXPECT_TRUE(contains(e, "0 bytes")) << e;
}

TEST(ParseBzImage, FileTruncatedInsideTheHeaderFailsNamingItsSize) {
  const Bytes full = valid_image();
  // Every length that cuts the header short, including just before and at the boot flag,
  // the "HdrS" magic, the version and the last header field.
  for (size_t n = 1; n < kHeaderEnd; ++n) {
    const Bytes b(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));

    const std::string e = parse_error(b);

    ASSERT_TRUE(contains(e, "only " + std::to_string(n) + " bytes")) << "size " << n << ": " << e;
  }
}

TEST(ParseBzImage, FileTruncatedInsideTheSetupSectorsFailsNamingBothSizes) {
  const Bytes full = valid_image();
  for (size_t n : {kHeaderEnd, size_t{1024}, kSetupBytes - 1, kSetupBytes}) {
    const Bytes b(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));

    const std::string e = parse_error(b);

    EXPECT_TRUE(contains(e, "truncated")) << "size " << n << ": " << e;
    EXPECT_TRUE(contains(e, "setup is " + std::to_string(kSetupBytes) + " bytes")) << e;
    EXPECT_TRUE(contains(e, "file " + std::to_string(n))) << e;
  }
}

TEST(ParseBzImage, MissingBootFlagIsRefused) {
  Bytes b = valid_image();
  put<uint16_t>(b, 0x1fe, 0x55aa);

  const std::string e = parse_error(b);

  EXPECT_TRUE(contains(e, "0xAA55")) << e;
}

TEST(ParseBzImage, MissingHdrSMagicIsRefused) {
  Bytes b = valid_image();
  b[0x205] = 'T';  // "HdrT"

  const std::string e = parse_error(b);

  EXPECT_TRUE(contains(e, "HdrS")) << e;
}

TEST(ParseBzImage, Protocol211IsTooOldFor64BitEntry) {
  Bytes b = valid_image();
  put<uint16_t>(b, 0x206, 0x020b);

  const std::string e = parse_error(b);

  EXPECT_TRUE(contains(e, "2.11")) << e;
  EXPECT_TRUE(contains(e, "2.12")) << e;
}

TEST(ParseBzImage, Protocol212IsTheOldestAccepted) {
  Bytes b = valid_image();
  put<uint16_t>(b, 0x206, 0x020c);

  auto img = parse_bzimage(b);

  ASSERT_TRUE(img) << img.error().message();
  EXPECT_EQ(img->protocol, 0x020c);
}

TEST(ParseBzImage, ImageWithoutXlfKernel64IsRefused) {
  Bytes b = valid_image();
  put<uint16_t>(b, 0x236, 0x0002);  // XLF_CAN_BE_LOADED_ABOVE_4G alone

  const std::string e = parse_error(b);

  EXPECT_TRUE(contains(e, "XLF_KERNEL_64")) << e;
}

TEST(ParseBzImage, ImageWithoutLoadedHighIsRefused) {
  Bytes b = valid_image();
  b[0x211] = 0x80;  // CAN_USE_HEAP only

  const std::string e = parse_error(b);

  EXPECT_TRUE(contains(e, "LOADED_HIGH")) << e;
}

TEST(ParseBzImage, SetupSectsReachingPastTheEndOfTheFileAreRefused) {
  Bytes b = valid_image();
  b[0x1f1] = 200;  // 201 * 512 bytes of setup in a 6.5 KiB file

  const std::string e = parse_error(b);

  EXPECT_TRUE(contains(e, "truncated")) << e;
  EXPECT_TRUE(contains(e, "setup is " + std::to_string(201 * 512) + " bytes")) << e;
}

TEST(ParseBzImage, HeaderShorterThanTheFieldsReadIsRefused) {
  Bytes b = valid_image();
  b[0x201] = 0x60;  // header would end at 0x262, before init_size's last bytes

  const std::string e = parse_error(b);

  EXPECT_TRUE(contains(e, "header length")) << e;
}

TEST(ParseBzImage, RandomGarbageNeverParses) {
  std::mt19937 rng(20261123);
  for (int round = 0; round < 2000; ++round) {
    Bytes b(std::uniform_int_distribution<size_t>(0, 8192)(rng));
    for (auto& x : b) x = static_cast<uint8_t>(rng());

    auto img = parse_bzimage(b);

    ASSERT_FALSE(img) << "round " << round << " parsed " << b.size() << " random bytes";
  }
}

// Garbage in the header behind a valid-looking magic reaches the deeper checks. Whatever is
// accepted must describe the file consistently: setup and kernel adjacent, inside it, covering it.
TEST(ParseBzImage, GarbageInTheHeaderEitherFailsOrDescribesTheFileConsistently) {
  std::mt19937 rng(7);
  const Bytes base = valid_image();
  int accepted = 0, refused = 0;
  for (int round = 0; round < 5000; ++round) {
    Bytes b = base;
    b.resize(std::uniform_int_distribution<size_t>(0x1f0, 16 * 1024)(rng));
    for (size_t i = 0x1f1; i < std::min<size_t>(b.size(), 0x280); ++i) {
      if (i >= 0x1fe && i < 0x206) continue;  // keep boot flag, jump and "HdrS"
      if (rng() % 8 == 0) b[i] = static_cast<uint8_t>(rng());
    }

    auto img = parse_bzimage(b);

    if (!img) {
      ++refused;
      continue;
    }
    ++accepted;
    ASSERT_EQ(img->setup.data(), b.data());
    ASSERT_EQ(img->setup.size(), (size_t{img->setup_sects} + 1) * 512);
    ASSERT_EQ(img->setup.size() + img->kernel.size(), b.size());
    ASSERT_GE(img->kernel.size(), 1u);
    ASSERT_GE(img->protocol, 0x020c);
    ASSERT_TRUE(img->xloadflags & 1);
    ASSERT_TRUE(img->loadflags & 1);
    ASSERT_GE(img->init_size, img->kernel.size());
  }
  // The fixed seed exercises both outcomes; otherwise this test would check nothing.
  EXPECT_GT(accepted, 0);
  EXPECT_GT(refused, 0);
}

// ---- a real kernel -------------------------------------------------------------------------

std::string find_real_kernel() {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_regular_file("/var/cache/iovirt-lab/vmlinuz", ec))
    return "/var/cache/iovirt-lab/vmlinuz";
  for (const auto& e : fs::directory_iterator("/boot", ec)) {
    if (e.path().filename().string().rfind("vmlinuz-", 0) == 0 && e.is_regular_file(ec))
      return e.path();
  }
  return {};
}

TEST(ParseBzImage, RealDebianKernelParses) {
  const std::string path = find_real_kernel();
  if (path.empty()) GTEST_SKIP() << "no kernel at /var/cache/iovirt-lab/vmlinuz or /boot/vmlinuz-*";
  std::ifstream f(path, std::ios::binary);
  ASSERT_TRUE(f) << "cannot read " << path;
  const Bytes b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());

  auto img = parse_bzimage(b);

  ASSERT_TRUE(img) << path << ": " << img.error().message();
  EXPECT_GE(img->protocol, 0x020c);
  EXPECT_TRUE(img->xloadflags & 1);
  EXPECT_EQ(img->setup.size(), (size_t{b[0x1f1] ? b[0x1f1] : 4u} + 1) * 512);
  EXPECT_GT(img->kernel.size(), 1u << 20);
  EXPECT_GE(img->init_size, img->kernel.size());
  EXPECT_GE(img->cmdline_size, 255u);
}

// ---- build_zero_page -----------------------------------------------------------------------

ZeroPageParams params() {
  ZeroPageParams p;
  p.cmdline_gpa = 0x20000;
  p.cmdline_len = 20;
  p.initrd_gpa = 0x4000000;
  p.initrd_size = 0x123456;
  p.rsdp_gpa = 0xe0000;
  p.e820 = {{0, 0x9fc00, 1}, {0x9fc00, 0x400, 2}, {0x100000, 0x1ff00000, 1}};
  return p;
}

TEST(BuildZeroPage, ImageWithoutASetupHeaderFails) {
  BzImage empty;

  auto zp = build_zero_page(empty, ZeroPageParams{});

  ASSERT_FALSE(zp.has_value());
  EXPECT_NE(zp.error().what().find("setup header"), std::string::npos);
}

TEST(BuildZeroPage, CopiesTheSetupHeaderAndNothingPastIt) {
  Bytes b = valid_image();
  b[0x268] = 0xab;  // just past the header as the jump byte defines it
  b[0x1f0] = 0xcd;  // just before it
  auto img = parse_bzimage(b);
  ASSERT_TRUE(img) << img.error().message();

  auto zp = build_zero_page(*img, params());

  ASSERT_TRUE(zp) << zp.error().message();
  ASSERT_EQ(zp->size(), zp::kSize);
  // The loader-owned fields inside the header are overwritten; compare the others.
  for (size_t off = 0x1f1; off < 0x268; ++off) {
    if (off == zp::kTypeOfLoader || off == zp::kLoadFlags ||
        (off >= zp::kRamdiskImage && off < zp::kRamdiskSize + 4) ||
        (off >= zp::kHeapEndPtr && off < zp::kHeapEndPtr + 2) ||
        (off >= zp::kCmdLinePtr && off < zp::kCmdLinePtr + 4))
      continue;
    ASSERT_EQ((*zp)[off], b[off]) << "offset 0x" << std::hex << off;
  }
  EXPECT_EQ((*zp)[0x268], 0);
  EXPECT_EQ((*zp)[0x1f0], 0);
  EXPECT_EQ(get<uint32_t>(*zp, 0x202), 0x53726448u);
  EXPECT_EQ(get<uint16_t>(*zp, 0x206), 0x020f);
}

TEST(BuildZeroPage, FillsTheLoaderFields) {
  const auto bytes = valid_image();  // BzImage holds spans into these bytes
  auto img = parse_bzimage(bytes);
  ASSERT_TRUE(img);

  auto zp = build_zero_page(*img, params());

  ASSERT_TRUE(zp) << zp.error().message();
  EXPECT_EQ((*zp)[zp::kTypeOfLoader], 0xff);
  EXPECT_EQ((*zp)[zp::kLoadFlags], 0x81) << "LOADED_HIGH kept, CAN_USE_HEAP added";
  EXPECT_EQ(get<uint16_t>(*zp, zp::kHeapEndPtr), 0xfe00);
  EXPECT_EQ(get<uint32_t>(*zp, zp::kCmdLinePtr), 0x20000u);
  EXPECT_EQ(get<uint32_t>(*zp, zp::kRamdiskImage), 0x4000000u);
  EXPECT_EQ(get<uint32_t>(*zp, zp::kRamdiskSize), 0x123456u);
  EXPECT_EQ(get<uint64_t>(*zp, zp::kAcpiRsdpAddr), 0xe0000u);
}

TEST(BuildZeroPage, WritesTheE820CountAndEntries) {
  const auto bytes = valid_image();  // BzImage holds spans into these bytes
  auto img = parse_bzimage(bytes);
  ASSERT_TRUE(img);
  const ZeroPageParams p = params();

  auto zp = build_zero_page(*img, p);

  ASSERT_TRUE(zp) << zp.error().message();
  ASSERT_EQ((*zp)[zp::kE820Entries], 3);
  for (size_t i = 0; i < 3; ++i) {
    const size_t at = zp::kE820Table + i * sizeof(E820Entry);
    EXPECT_EQ(get<uint64_t>(*zp, at), p.e820[i].addr) << "entry " << i;
    EXPECT_EQ(get<uint64_t>(*zp, at + 8), p.e820[i].size) << "entry " << i;
    EXPECT_EQ(get<uint32_t>(*zp, at + 16), p.e820[i].type) << "entry " << i;
  }
  EXPECT_EQ(get<uint64_t>(*zp, zp::kE820Table + 3 * sizeof(E820Entry)), 0u)
      << "nothing past the last entry";
}

TEST(BuildZeroPage, WithoutInitrdTheRamdiskFieldsStayZero) {
  const auto bytes = valid_image();  // BzImage holds spans into these bytes
  auto img = parse_bzimage(bytes);
  ASSERT_TRUE(img);
  ZeroPageParams p = params();
  p.initrd_gpa = 0;
  p.initrd_size = 0;

  auto zp = build_zero_page(*img, p);

  ASSERT_TRUE(zp) << zp.error().message();
  EXPECT_EQ(get<uint32_t>(*zp, zp::kRamdiskImage), 0u);
  EXPECT_EQ(get<uint32_t>(*zp, zp::kRamdiskSize), 0u);
}

TEST(BuildZeroPage, CmdlineLongerThanTheKernelAcceptsIsRefused) {
  const auto bytes = valid_image();  // BzImage holds spans into these bytes
  auto img = parse_bzimage(bytes);
  ASSERT_TRUE(img);
  ZeroPageParams p = params();
  p.cmdline_len = 2048;  // cmdline_size is 2047

  auto zp = build_zero_page(*img, p);

  ASSERT_FALSE(zp);
  EXPECT_TRUE(contains(zp.error().message(), "2048")) << zp.error().message();
  EXPECT_TRUE(contains(zp.error().message(), "2047")) << zp.error().message();
}

TEST(BuildZeroPage, CmdlineOfExactlyCmdlineSizeIsAccepted) {
  const auto bytes = valid_image();  // BzImage holds spans into these bytes
  auto img = parse_bzimage(bytes);
  ASSERT_TRUE(img);
  ZeroPageParams p = params();
  p.cmdline_len = 2047;

  auto zp = build_zero_page(*img, p);

  EXPECT_TRUE(zp) << zp.error().message();
}

TEST(BuildZeroPage, InitrdEndingAboveInitrdAddrMaxIsRefused) {
  Bytes b = valid_image();
  put<uint32_t>(b, 0x22c, 0x37ffffff);
  auto img = parse_bzimage(b);
  ASSERT_TRUE(img);
  ZeroPageParams p = params();
  p.initrd_gpa = 0x37fff000;
  p.initrd_size = 0x1001;  // last byte at 0x38000000

  auto zp = build_zero_page(*img, p);

  ASSERT_FALSE(zp);
  EXPECT_TRUE(contains(zp.error().message(), "initrd_addr_max")) << zp.error().message();
}

TEST(BuildZeroPage, MoreE820EntriesThanTheTableHoldsAreRefused) {
  const auto bytes = valid_image();  // BzImage holds spans into these bytes
  auto img = parse_bzimage(bytes);
  ASSERT_TRUE(img);
  ZeroPageParams p = params();
  p.e820.assign(zp::kE820Max + 1, E820Entry{0, 0x1000, 1});

  auto zp = build_zero_page(*img, p);

  ASSERT_FALSE(zp);
  EXPECT_TRUE(contains(zp.error().message(), "e820")) << zp.error().message();
}

}  // namespace
}  // namespace iovirt
