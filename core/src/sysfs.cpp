#include "iovirt/core/sysfs.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdio>

#include "iovirt/core/fd.hpp"

namespace iovirt {

namespace {

// Parses exactly `digits` lower- or upper-case hex digits.
bool parse_hex(std::string_view s, std::size_t digits, unsigned& out) {
  if (s.size() != digits) return false;
  unsigned v = 0;
  for (char c : s) {
    unsigned d = 0;
    if (c >= '0' && c <= '9') {
      d = static_cast<unsigned>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      d = static_cast<unsigned>(c - 'a') + 10U;
    } else if (c >= 'A' && c <= 'F') {
      d = static_cast<unsigned>(c - 'A') + 10U;
    } else {
      return false;
    }
    v = v * 16U + d;
  }
  out = v;
  return true;
}

std::string_view trim(std::string_view s) {
  constexpr std::string_view ws = " \t\r\n";
  auto b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  auto e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

}  // namespace

Result<PciAddress> PciAddress::parse(std::string_view s) {
  auto bad = [&] {
    std::string m = "malformed PCI address '";
    m += s.substr(0, 64);
    m += "': expected DDDD:BB:DD.F (e.g. 0000:01:00.1, as `lspci -D` prints)";
    return fail(std::move(m), EINVAL);
  };
  if (s.size() != 12 || s[4] != ':' || s[7] != ':' || s[10] != '.') return bad();
  unsigned dom = 0, bus = 0, dev = 0, fn = 0;
  if (!parse_hex(s.substr(0, 4), 4, dom) || !parse_hex(s.substr(5, 2), 2, bus) ||
      !parse_hex(s.substr(8, 2), 2, dev) || !parse_hex(s.substr(11, 1), 1, fn)) {
    return bad();
  }
  if (dev > 0x1f || fn > 7) return bad();
  return PciAddress{static_cast<std::uint16_t>(dom), static_cast<std::uint8_t>(bus),
                    static_cast<std::uint8_t>(dev), static_cast<std::uint8_t>(fn)};
}

std::string PciAddress::to_string() const {
  std::array<char, 16> buf{};
  std::snprintf(buf.data(), buf.size(), "%04x:%02x:%02x.%x", unsigned{domain}, unsigned{bus},
                unsigned{device}, unsigned{function});
  return std::string(buf.data());
}

Sysfs::Sysfs(std::filesystem::path root) : root_(std::move(root)) {}

std::filesystem::path Sysfs::pci_device(const PciAddress& a) const {
  return root_ / "bus/pci/devices" / a.to_string();
}

std::filesystem::path Sysfs::pci_driver(std::string_view name) const {
  return root_ / "bus/pci/drivers" / std::string(name);
}

std::filesystem::path Sysfs::pci_drivers_probe() const {
  return root_ / "bus/pci/drivers_probe";
}

Result<std::string> Sysfs::read(const std::filesystem::path& p, std::size_t max_bytes) const {
  Fd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return fail_errno("read " + p.string());
  std::string buf(max_bytes, '\0');
  std::size_t got = 0;
  while (got < max_bytes) {
    ssize_t n = ::read(fd.get(), buf.data() + got, max_bytes - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail_errno("read " + p.string());
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  return std::string(trim(std::string_view(buf.data(), got)));
}

Result<std::uint64_t> Sysfs::read_uint(const std::filesystem::path& p) const {
  auto r = read(p, 64);
  if (!r) return std::unexpected(std::move(r.error()).context("read number"));
  const std::string& s = *r;  // no move out of the expected: g++ 12 -O2 false positive
  std::string_view v = s;
  int base = 10;
  if (v.size() >= 2 && v[0] == '0' && (v[1] == 'x' || v[1] == 'X')) {
    v.remove_prefix(2);
    base = 16;
  }
  std::uint64_t out = 0;
  auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), out, base);
  if (v.empty() || ec != std::errc() || ptr != v.data() + v.size()) {
    return fail(p.string() + ": not a number: '" + s + "'", EINVAL);
  }
  return out;
}

Status Sysfs::write(const std::filesystem::path& p, std::string_view value) const {
  // O_TRUNC as a shell's `echo v > attr` does: sysfs ignores it, a fake tree's plain file needs it.
  Fd fd(::open(p.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC));
  if (!fd) return fail_errno("open " + p.string() + " for writing");
  std::string v(value);
  v += '\n';
  for (;;) {
    ssize_t n = ::write(fd.get(), v.data(), v.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail_errno("write '" + std::string(value) + "' to " + p.string());
    if (static_cast<std::size_t>(n) != v.size()) {
      return fail("short write of '" + std::string(value) + "' to " + p.string(), EIO);
    }
    return {};
  }
}

Result<std::filesystem::path> Sysfs::readlink(const std::filesystem::path& p) const {
  std::array<char, 4096> buf{};
  ssize_t n = ::readlink(p.c_str(), buf.data(), buf.size());
  if (n < 0) return fail_errno("readlink " + p.string());
  if (static_cast<std::size_t>(n) >= buf.size()) {
    return fail("readlink " + p.string() + ": target too long", ENAMETOOLONG);
  }
  return std::filesystem::path(std::string(buf.data(), static_cast<std::size_t>(n)));
}

Result<std::optional<std::string>> Sysfs::link_name(const std::filesystem::path& p) const {
  auto t = readlink(p);
  if (!t) {
    if (t.error().code() == ENOENT) return std::optional<std::string>{};
    return std::unexpected(std::move(t.error()));
  }
  return std::optional<std::string>(t->filename().string());
}

Result<std::vector<std::string>> Sysfs::list(const std::filesystem::path& dir) const {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return fail_errno("list " + dir.string());
  std::vector<std::string> out;
  errno = 0;
  while (dirent* e = ::readdir(d)) {
    std::string_view n = e->d_name;
    if (n == "." || n == "..") continue;
    out.emplace_back(n);
  }
  int err = errno;
  ::closedir(d);
  if (err != 0) return fail("list " + dir.string(), err);
  std::sort(out.begin(), out.end());
  return out;
}

bool Sysfs::exists(const std::filesystem::path& p) const {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

}  // namespace iovirt
