// What `iovirt run` was asked to build, parsed from the command line.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "iovirt/core/error.hpp"

namespace iovirt {

struct VmConfig {
  std::string kernel;
  std::string initrd;
  std::string cmdline = "console=ttyS0 reboot=acpi panic=-1";
  uint32_t cpus = 1;
  uint64_t memory = 512ull << 20;
  std::string metrics;  // HOST:PORT, empty = off
  bool hugepages = false;
};

enum class Command { Run, Help, Version };

struct ParsedArgs {
  Command command = Command::Help;
  VmConfig vm;
};

// "512M", "2G", "1048576", "64k" -> bytes. Refuses garbage, zero and overflow.
Result<uint64_t> parse_size(const std::string& s);

// Parses argv (without argv[0]). Errors are one line naming the option and the problem.
// Checks only what needs no system access; limits that depend on the host (KVM's vCPU limit,
// host RAM) are checked when the VM is built.
Result<ParsedArgs> parse_args(const std::vector<std::string>& args);

std::string usage();

inline constexpr uint64_t kMinMemory = 64ull << 20;
inline constexpr uint64_t kMaxMemory = 1ull << 40;  // 1 TiB: fits the 39-bit guest physical map
inline constexpr uint32_t kMaxCpus = 255;            // xAPIC ids in the MADT

}  // namespace iovirt
