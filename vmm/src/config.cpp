#include "iovirt/vmm/config.hpp"

#include <cctype>
#include <charconv>

namespace iovirt {

Result<uint64_t> parse_size(const std::string& s) {
  if (s.empty()) return fail("empty size");
  uint64_t v = 0;
  const char* b = s.data();
  const char* e = s.data() + s.size();
  auto [p, ec] = std::from_chars(b, e, v);
  if (ec == std::errc::result_out_of_range) return fail("size '" + s + "' is too large");
  if (ec != std::errc() || p == b) return fail("size '" + s + "' is not a number (use e.g. 512M or 2G)");
  unsigned shift = 0;
  if (p != e) {
    switch (std::toupper(static_cast<unsigned char>(*p))) {
      case 'K': shift = 10; break;
      case 'M': shift = 20; break;
      case 'G': shift = 30; break;
      case 'T': shift = 40; break;
      default: return fail("size '" + s + "' has an unknown suffix (use K, M, G or T)");
    }
    ++p;
    if (p != e && (*p == 'i' || *p == 'I')) ++p;
    if (p != e && (*p == 'b' || *p == 'B')) ++p;
    if (p != e) return fail("size '" + s + "' has trailing characters");
  }
  if (shift && v > (UINT64_MAX >> shift)) return fail("size '" + s + "' is too large");
  v <<= shift;
  if (v == 0) return fail("size '" + s + "' is zero");
  return v;
}

std::string usage() {
  return "usage: iovirt run --kernel PATH [--initrd PATH] [--cmdline STR] [--cpus N]\n"
         "                  [--memory SIZE] [--hugepages] [--metrics HOST:PORT]\n"
         "       iovirt --help | --version\n"
         "\n"
         "  --kernel PATH        bzImage to boot (x86-64 Linux boot protocol >= 2.12)\n"
         "  --initrd PATH        initramfs loaded below 4 GiB\n"
         "  --cmdline STR        kernel command line (default: console=ttyS0 reboot=acpi panic=-1)\n"
         "  --cpus N             number of vCPUs (default 1)\n"
         "  --memory SIZE        guest RAM, e.g. 512M, 4G (default 512M)\n"
         "  --hugepages          back guest RAM with 2 MiB hugetlbfs pages\n"
         "  --metrics HOST:PORT  serve Prometheus metrics at http://HOST:PORT/metrics\n"
         "\n"
         "exit status: 0 guest powered off, 1 error, 2 usage error, 3 guest reset/reboot,\n"
         "             128+N stopped by signal N\n";
}

namespace {

Result<uint32_t> parse_u32(const std::string& opt, const std::string& v) {
  uint32_t n = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || p != v.data() + v.size() || v.empty())
    return fail(opt + ": '" + v + "' is not a positive integer");
  return n;
}

Status check_host_port(const std::string& v) {
  auto colon = v.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == v.size())
    return fail("--metrics: '" + v + "' is not HOST:PORT (e.g. 127.0.0.1:9100)");
  uint32_t port = 0;
  std::string ps = v.substr(colon + 1);
  auto [p, ec] = std::from_chars(ps.data(), ps.data() + ps.size(), port);
  if (ec != std::errc() || p != ps.data() + ps.size() || port > 65535)
    return fail("--metrics: port '" + ps + "' is not a number in 0..65535");
  return {};
}

}  // namespace

Result<ParsedArgs> parse_args(const std::vector<std::string>& args) {
  ParsedArgs out;
  if (args.empty()) return fail("no command given (try: iovirt run --kernel PATH, or iovirt --help)");
  const std::string& cmd = args[0];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    out.command = Command::Help;
    return out;
  }
  if (cmd == "--version" || cmd == "version") {
    out.command = Command::Version;
    return out;
  }
  if (cmd != "run") return fail("unknown command '" + cmd + "' (the command is: run)");
  out.command = Command::Run;
  bool have_kernel = false;
  for (size_t i = 1; i < args.size(); ++i) {
    std::string opt = args[i];
    std::string val;
    bool inline_val = false;
    if (auto eq = opt.find('='); opt.rfind("--", 0) == 0 && eq != std::string::npos) {
      val = opt.substr(eq + 1);
      opt = opt.substr(0, eq);
      inline_val = true;
    }
    if (opt == "--help" || opt == "-h") {
      out.command = Command::Help;
      return out;
    }
    if (opt == "--hugepages") {
      if (inline_val) return fail("--hugepages takes no value");
      out.vm.hugepages = true;
      continue;
    }
    static const char* kWithValue[] = {"--kernel", "--initrd", "--cmdline", "--cpus", "--memory", "--metrics"};
    bool known = false;
    for (const char* k : kWithValue) known |= (opt == k);
    if (!known) return fail("unknown option '" + opt + "' (see iovirt --help)");
    if (!inline_val) {
      if (i + 1 >= args.size()) return fail(opt + " needs a value");
      val = args[++i];
    }
    if (opt == "--kernel") {
      if (val.empty()) return fail("--kernel: empty path");
      out.vm.kernel = val;
      have_kernel = true;
    } else if (opt == "--initrd") {
      if (val.empty()) return fail("--initrd: empty path");
      out.vm.initrd = val;
    } else if (opt == "--cmdline") {
      out.vm.cmdline = val;
    } else if (opt == "--cpus") {
      auto parsed = parse_u32(opt, val);
      if (!parsed) return std::unexpected(parsed.error());
      uint32_t n = *parsed;
      if (n == 0) return fail("--cpus: a VM needs at least one vCPU");
      if (n > kMaxCpus) return fail("--cpus: " + val + " is more than iovirt supports (" + std::to_string(kMaxCpus) + ")");
      out.vm.cpus = n;
    } else if (opt == "--memory") {
      auto sz = parse_size(val);
      if (!sz) return fail("--memory: " + sz.error().what());
      if (*sz < kMinMemory) return fail("--memory: " + val + " is too small (minimum 64M)");
      if (*sz > kMaxMemory) return fail("--memory: " + val + " is too large (maximum 1T)");
      if (*sz % (2ull << 20)) return fail("--memory: " + val + " is not a multiple of 2M");
      out.vm.memory = *sz;
    } else if (opt == "--metrics") {
      if (auto s = check_host_port(val); !s) return std::unexpected(s.error());
      out.vm.metrics = val;
    }
  }
  if (!have_kernel) return fail("run: --kernel PATH is required");
  return out;
}

}  // namespace iovirt
