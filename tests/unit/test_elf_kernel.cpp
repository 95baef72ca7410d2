// parse_elf_kernel: the vmlinux parser treats the kernel file as untrusted input.
#include <elf.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "iovirt/vmm/elf_kernel.hpp"

namespace iovirt {
namespace {

// A minimal ELF64 x86-64 executable image: header, `phnum` program headers, then payload.
struct ElfBuilder {
  Elf64_Ehdr eh{};
  std::vector<Elf64_Phdr> ph;
  uint64_t file_size = 0x10000;

  ElfBuilder() {
    std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
    eh.e_ident[EI_CLASS] = ELFCLASS64;
    eh.e_ident[EI_DATA] = ELFDATA2LSB;
    eh.e_ident[EI_VERSION] = EV_CURRENT;
    eh.e_type = ET_EXEC;
    eh.e_machine = EM_X86_64;
    eh.e_entry = 0x1000000;
    eh.e_phoff = sizeof(Elf64_Ehdr);
    eh.e_phentsize = sizeof(Elf64_Phdr);
    add_load(0x1000, 0x1000000, 0x2000, 0x3000);
  }
  void add_load(uint64_t off, uint64_t paddr, uint64_t filesz, uint64_t memsz) {
    Elf64_Phdr p{};
    p.p_type = PT_LOAD;
    p.p_offset = off;
    p.p_paddr = paddr;
    p.p_filesz = filesz;
    p.p_memsz = memsz;
    ph.push_back(p);
  }
  std::vector<uint8_t> head() {
    eh.e_phnum = static_cast<uint16_t>(ph.size());
    std::vector<uint8_t> b(sizeof eh + ph.size() * sizeof(Elf64_Phdr));
    std::memcpy(b.data(), &eh, sizeof eh);
    if (!ph.empty()) std::memcpy(b.data() + sizeof eh, ph.data(), ph.size() * sizeof(Elf64_Phdr));
    return b;
  }
};

TEST(ParseElfKernel, ValidImageYieldsEntryAndSegments) {
  ElfBuilder b;
  b.add_load(0x3000, 0x1003000, 0x100, 0x200);
  auto head = b.head();

  auto k = parse_elf_kernel(head, b.file_size);

  ASSERT_TRUE(k.has_value()) << k.error().message();
  EXPECT_EQ(k->entry, 0x1000000u);
  ASSERT_EQ(k->segments.size(), 2u);
  EXPECT_EQ(k->lowest, 0x1000000u);
  EXPECT_EQ(k->highest, 0x1003200u);
}

TEST(ParseElfKernel, NonLoadSegmentsAreSkipped) {
  ElfBuilder b;
  b.ph.push_back(Elf64_Phdr{PT_NOTE, 0, 0x100, 0, 0, 0x10, 0x10, 4});
  auto head = b.head();

  auto k = parse_elf_kernel(head, b.file_size);

  ASSERT_TRUE(k.has_value()) << k.error().message();
  EXPECT_EQ(k->segments.size(), 1u);
}

TEST(ParseElfKernel, TruncatedHeaderFails) {
  ElfBuilder b;
  auto head = b.head();
  head.resize(20);

  EXPECT_FALSE(parse_elf_kernel(head, b.file_size).has_value());
}

TEST(ParseElfKernel, WrongClassMachineOrTypeFailNamingTheRule) {
  ElfBuilder c32, arm, dyn;
  c32.eh.e_ident[EI_CLASS] = ELFCLASS32;
  arm.eh.e_machine = EM_AARCH64;
  dyn.eh.e_type = ET_DYN;
  auto h1 = c32.head(), h2 = arm.head(), h3 = dyn.head();

  auto r1 = parse_elf_kernel(h1, 0x10000), r2 = parse_elf_kernel(h2, 0x10000), r3 = parse_elf_kernel(h3, 0x10000);

  ASSERT_FALSE(r1 || r2 || r3);
  EXPECT_NE(r1.error().what().find("64-bit"), std::string::npos);
  EXPECT_NE(r2.error().what().find("x86-64"), std::string::npos);
  EXPECT_NE(r3.error().what().find("ET_EXEC"), std::string::npos);
}

TEST(ParseElfKernel, ProgramHeadersOutsideTheHeadFail) {
  ElfBuilder b;
  b.eh.e_phoff = 0xfffffffffffffff0ull;  // offset + size wraps
  auto head = b.head();

  EXPECT_FALSE(parse_elf_kernel(head, b.file_size).has_value());
}

TEST(ParseElfKernel, SegmentPastEndOfFileFails) {
  ElfBuilder b;
  b.ph[0].p_filesz = b.file_size;  // offset 0x1000 + whole file
  b.ph[0].p_memsz = b.file_size;
  auto head = b.head();

  auto k = parse_elf_kernel(head, b.file_size);

  ASSERT_FALSE(k.has_value());
  EXPECT_NE(k.error().what().find("past the end"), std::string::npos);
}

TEST(ParseElfKernel, FileSizeLargerThanMemorySizeFails) {
  ElfBuilder b;
  b.ph[0].p_memsz = b.ph[0].p_filesz - 1;
  auto head = b.head();

  EXPECT_FALSE(parse_elf_kernel(head, b.file_size).has_value());
}

TEST(ParseElfKernel, SegmentWrappingThePhysicalAddressSpaceFails) {
  ElfBuilder b;
  b.ph[0].p_paddr = 0xfffffffffffff000ull;
  b.eh.e_entry = 0xfffffffffffff000ull;
  auto head = b.head();

  auto k = parse_elf_kernel(head, b.file_size);

  ASSERT_FALSE(k.has_value());
  EXPECT_NE(k.error().what().find("wraps"), std::string::npos);
}

TEST(ParseElfKernel, EntryOutsideLoadedSegmentsFails) {
  ElfBuilder b;
  b.eh.e_entry = 0x5000000;
  auto head = b.head();

  auto k = parse_elf_kernel(head, b.file_size);

  ASSERT_FALSE(k.has_value());
  EXPECT_NE(k.error().what().find("entry point"), std::string::npos);
}

TEST(ParseElfKernel, NoLoadableSegmentFails) {
  ElfBuilder b;
  b.ph[0].p_type = PT_NOTE;
  auto head = b.head();

  EXPECT_FALSE(parse_elf_kernel(head, b.file_size).has_value());
}

TEST(ParseElfKernel, TooManyProgramHeadersFails) {
  ElfBuilder b;
  for (int i = 0; i < 64; ++i) b.add_load(0x1000, 0x1000000, 0x10, 0x10);
  auto head = b.head();

  EXPECT_FALSE(parse_elf_kernel(head, b.file_size).has_value());
}

TEST(ParseElfKernel, RealDebianVmlinuxParsesWhenTheLabHasOne) {
  const char* path = "/var/cache/iovirt-lab/vmlinux";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " absent (deploy/lab/lab.sh setup extracts it)";
  std::ifstream f(path, std::ios::binary);
  std::vector<uint8_t> head(64 * 1024);
  f.read(reinterpret_cast<char*>(head.data()), static_cast<std::streamsize>(head.size()));
  uint64_t size = std::filesystem::file_size(path);

  auto k = parse_elf_kernel(head, size);

  ASSERT_TRUE(k.has_value()) << k.error().message();
  EXPECT_EQ(k->entry, 0x1000000u);  // phys_startup_64 at LOAD_PHYSICAL_ADDR
  EXPECT_GE(k->lowest, 0x100000u);
}

}  // namespace
}  // namespace iovirt
