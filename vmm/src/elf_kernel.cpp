#include "iovirt/vmm/elf_kernel.hpp"

#include <elf.h>

#include <cstring>

namespace iovirt {

bool is_elf(std::span<const uint8_t> head) {
  return head.size() >= SELFMAG && std::memcmp(head.data(), ELFMAG, SELFMAG) == 0;
}

Result<ElfKernel> parse_elf_kernel(std::span<const uint8_t> head, uint64_t file_size) {
  if (head.size() < sizeof(Elf64_Ehdr) || !is_elf(head)) return fail("not an ELF file");
  Elf64_Ehdr eh;
  std::memcpy(&eh, head.data(), sizeof eh);
  if (eh.e_ident[EI_CLASS] != ELFCLASS64) return fail("ELF kernel is not 64-bit");
  if (eh.e_ident[EI_DATA] != ELFDATA2LSB) return fail("ELF kernel is not little-endian");
  if (eh.e_machine != EM_X86_64) return fail("ELF kernel is not for x86-64 (e_machine " + std::to_string(eh.e_machine) + ")");
  if (eh.e_type != ET_EXEC) return fail("ELF kernel is not an executable (ET_EXEC)");
  if (eh.e_phentsize != sizeof(Elf64_Phdr)) return fail("ELF kernel has an unexpected program header size");
  if (eh.e_phnum == 0 || eh.e_phnum > 64) return fail("ELF kernel has " + std::to_string(eh.e_phnum) + " program headers (1..64 accepted)");
  uint64_t ph_end = eh.e_phoff + uint64_t{eh.e_phnum} * sizeof(Elf64_Phdr);
  if (eh.e_phoff > head.size() || ph_end > head.size() || ph_end < eh.e_phoff)
    return fail("ELF kernel program headers lie outside the file header area");

  ElfKernel k;
  k.entry = eh.e_entry;
  k.lowest = UINT64_MAX;
  bool entry_loaded = false;
  for (uint16_t i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr ph;
    std::memcpy(&ph, head.data() + eh.e_phoff + i * sizeof(Elf64_Phdr), sizeof ph);
    if (ph.p_type != PT_LOAD) continue;
    if (ph.p_filesz > ph.p_memsz) return fail("ELF segment " + std::to_string(i) + ": file size exceeds memory size");
    if (ph.p_offset > file_size || ph.p_filesz > file_size - ph.p_offset)
      return fail("ELF segment " + std::to_string(i) + " extends past the end of the file");
    if (ph.p_paddr + ph.p_memsz < ph.p_paddr) return fail("ELF segment " + std::to_string(i) + " wraps around");
    k.segments.push_back({ph.p_offset, ph.p_paddr, ph.p_filesz, ph.p_memsz});
    k.lowest = std::min(k.lowest, ph.p_paddr);
    k.highest = std::max(k.highest, ph.p_paddr + ph.p_memsz);
    if (eh.e_entry >= ph.p_paddr && eh.e_entry < ph.p_paddr + ph.p_memsz) entry_loaded = true;
  }
  if (k.segments.empty()) return fail("ELF kernel has no loadable segment");
  if (!entry_loaded) return fail("ELF kernel entry point is outside its loaded segments");
  return k;
}

}  // namespace iovirt
