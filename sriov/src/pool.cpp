#include "iovirt/sriov/pool.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <charconv>
#include <ctime>
#include <system_error>

#include "iovirt/core/log.hpp"

namespace iovirt::sriov {

namespace {

constexpr std::size_t kMaxLeaseBytes = 4096;
constexpr std::size_t kMaxVmName = 256;

template <class T>
bool parse_int(std::string_view s, T& out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return !s.empty() && ec == std::errc() && p == s.data() + s.size();
}

Result<std::string> read_fd(int fd) {
  std::string buf(kMaxLeaseBytes, '\0');
  std::size_t got = 0;
  while (got < buf.size()) {
    ssize_t n = ::pread(fd, buf.data() + got, buf.size() - got, static_cast<off_t>(got));
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail_errno("read lease file");
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  buf.resize(got);
  return buf;
}

Status write_fd(int fd, const std::string& text) {
  if (::ftruncate(fd, 0) != 0) return fail_errno("truncate lease file");
  std::size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::pwrite(fd, text.data() + done, text.size() - done, static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail_errno("write lease file");
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) return fail_errno("fsync lease file");
  return {};
}

// True when fd still is the file at path (release() unlinks under the lock; a racing allocator
// that opened the old inode must not believe it holds the lease).
bool same_file(int fd, const std::filesystem::path& path) {
  struct stat a {}, b {};
  if (::fstat(fd, &a) != 0 || ::stat(path.c_str(), &b) != 0) return false;
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

}  // namespace

std::string LeaseRecord::serialize() const {
  std::string s;
  s += "pid=" + std::to_string(pid) + "\n";
  s += "vm=" + vm + "\n";
  s += "vf=" + (vf ? vf->to_string() : std::string()) + "\n";
  s += "pf=" + (pf ? pf->to_string() : std::string()) + "\n";
  s += "restore_driver=" + restore_driver.value_or("") + "\n";
  s += "since=" + std::to_string(since) + "\n";
  if (!net_restore.empty()) {
    s += "net_dev=" + net_dev + "\n";
    s += "net_index=" + std::to_string(net_index) + "\n";
    s += "net_restore=" + net_restore + "\n";
  }
  return s;
}

Result<LeaseRecord> LeaseRecord::parse(std::string_view text) {
  LeaseRecord r;
  while (!text.empty()) {
    auto nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    if (line.empty()) continue;
    auto eq = line.find('=');
    if (eq == std::string_view::npos) {
      return fail("lease record line without '=': '" + std::string(line.substr(0, 80)) + "'",
                  EINVAL);
    }
    std::string_view k = line.substr(0, eq), v = line.substr(eq + 1);
    if (k == "pid") {
      if (!parse_int(v, r.pid) || r.pid <= 0) {
        return fail("lease record: bad pid '" + std::string(v) + "'", EINVAL);
      }
    } else if (k == "vm") {
      r.vm = std::string(v);
    } else if (k == "vf" || k == "pf") {
      if (v.empty()) continue;
      IOVIRT_TRY_CTX(a, PciAddress::parse(v), "lease record " + std::string(k));
      (k == "vf" ? r.vf : r.pf) = a;
    } else if (k == "restore_driver") {
      if (!v.empty()) r.restore_driver = std::string(v);
    } else if (k == "net_dev") {
      r.net_dev = std::string(v);
    } else if (k == "net_index") {
      if (!parse_int(v, r.net_index)) {
        return fail("lease record: bad net_index '" + std::string(v) + "'", EINVAL);
      }
    } else if (k == "net_restore") {
      r.net_restore = std::string(v);
    } else if (k == "since") {
      if (!parse_int(v, r.since)) {
        return fail("lease record: bad since '" + std::string(v) + "'", EINVAL);
      }
    }
  }
  return r;
}

VfPool::VfPool(Sriov& sriov, std::filesystem::path dir) : sriov_(sriov), dir_(std::move(dir)) {}

Status VfPool::ensure_dir() const {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec) {
    return fail("create lease directory " + dir_.string() + " (run as root or pick a writable dir)",
                ec.value());
  }
  return {};
}

Status VfPool::update(Lease& lease, const LeaseRecord& rec) {
  if (!lease.held()) return fail("update a lease that is not held", EINVAL);
  if (rec.net_dev.find('\n') != std::string::npos || rec.net_restore.find('\n') != std::string::npos)
    return fail("lease record: a value with a newline", EINVAL);
  IOVIRT_CHECK_CTX(write_fd(lease.fd_.get(), rec.serialize()), lease.file_.string());
  lease.record_ = rec;
  return {};
}

Status VfPool::give_back(const PciAddress& vf, const LeaseRecord& rec) {
  if (!rec.net_restore.empty()) {
    // Best effort: a VF whose settings cannot be put back still goes back to the host.
    auto want = parse_vf_settings(rec.net_restore);
    if (!want) {
      log_warn("sriov: VF " + vf.to_string() + ": recorded network settings unreadable: " + want.error().message());
    } else if (net_ == nullptr) {
      log_warn("sriov: VF " + vf.to_string() + ": network settings (" + rec.net_restore + ") not restored");
    } else if (auto st = net_->set(rec.net_dev, rec.net_index, *want); !st) {
      log_warn("sriov: VF " + vf.to_string() + ": restoring " + rec.net_restore + " on " + rec.net_dev +
               ":vf" + std::to_string(rec.net_index) + ": " + st.error().message());
    } else {
      log_info("sriov: VF " + vf.to_string() + ": network settings restored (" + rec.net_restore + ")");
    }
  }
  IOVIRT_TRY_CTX(did_reset, sriov_.reset(vf), "give back VF " + vf.to_string());
  if (!did_reset) {
    log_warn("sriov: VF " + vf.to_string() +
             " has no reset attribute: returned without a function reset");
  }
  IOVIRT_CHECK_CTX(sriov_.restore(vf, rec.restore_driver), "give back VF " + vf.to_string());
  return {};
}

Result<Lease> VfPool::allocate(const PciAddress& pf_addr, std::string_view vm_name) {
  const std::string pf_name = pf_addr.to_string();
  if (vm_name.empty() || vm_name.size() > kMaxVmName ||
      vm_name.find_first_of(std::string_view("\n\0", 2)) != std::string_view::npos) {
    return fail("allocate a VF of " + pf_name +
                    ": VM name must be 1-256 characters without newlines",
                EINVAL);
  }
  IOVIRT_CHECK_CTX(ensure_dir(), "allocate a VF of " + pf_name);
  IOVIRT_TRY_CTX(info, sriov_.pf(pf_addr), "allocate a VF");
  if (info.vfs.empty()) {
    return fail("allocate a VF of " + pf_name + ": the PF has no VFs enabled: enable some first",
                ENOENT);
  }
  unsigned live = 0, outside = 0, broken = 0;
  std::string last_error;
  for (const auto& vf : info.vfs) {
    const std::string vf_name = vf.address.to_string();
    const auto path = dir_ / vf_name;
    Fd fd;
    bool busy = false;
    // Retry when release() unlinked the file between our open() and flock().
    for (int attempt = 0; attempt < 16 && !fd; ++attempt) {
      Fd f(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
      if (!f) return fail_errno("open lease file " + path.string());
      if (::flock(f.get(), LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK) {
          busy = true;
          break;
        }
        return fail_errno("flock lease file " + path.string());
      }
      if (same_file(f.get(), path)) fd = std::move(f);
    }
    if (busy) {
      ++live;
      continue;
    }
    if (!fd) return fail("lease file " + path.string() + " keeps being replaced", EAGAIN);

    IOVIRT_TRY_CTX(text, read_fd(fd.get()), path.string());
    if (!text.empty()) {
      auto old = LeaseRecord::parse(text);
      if (!old) {
        log_error("sriov: VF " + vf_name + ": unreadable stale lease " + path.string() + " (" +
                  old.error().message() + "): skipping it; inspect and remove the file");
        ++broken;
        continue;
      }
      log_warn("sriov: VF " + vf_name + ": lease of pid " + std::to_string(old->pid) + " (vm '" +
               old->vm + "') is stale, its holder died: resetting, restoring driver " +
               old->restore_driver.value_or("(none)") + ", reclaiming");
      if (auto st = give_back(vf.address, *old); !st) {
        last_error = st.error().message();
        log_error("sriov: reclaim of VF " + vf_name + " failed: " + last_error);
        ++broken;
        continue;  // the lease file stays; the next allocation retries the reclaim
      }
    }
    IOVIRT_TRY_CTX(current, sriov_.driver_of(vf.address), "allocate VF " + vf_name);
    if (current && *current == kVfioPci) {
      // Bound to vfio-pci and no (live or stale) iovirt lease: someone else's passthrough.
      ::unlink(path.c_str());
      ++outside;
      continue;
    }
    Lease lease;
    lease.record_.pid = ::getpid();
    lease.record_.vm = std::string(vm_name);
    lease.record_.vf = vf.address;
    lease.record_.pf = pf_addr;
    lease.record_.restore_driver = current;
    lease.record_.since = static_cast<std::int64_t>(::time(nullptr));
    IOVIRT_CHECK_CTX(write_fd(fd.get(), lease.record_.serialize()), path.string());
    auto bound = sriov_.bind(vf.address, kVfioPci);
    if (!bound) {
      // Nothing changed for the host beyond a possible unbind: put it back, drop the lease.
      if (auto st = sriov_.restore(vf.address, current); !st) {
        log_error("sriov: VF " + vf_name + ": restore after failed bind: " + st.error().message());
      } else {
        ::unlink(path.c_str());
      }
      return std::unexpected(std::move(bound.error()).context("allocate a VF of " + pf_name));
    }
    lease.fd_ = std::move(fd);
    lease.file_ = path;
    log_info("sriov: VF " + vf_name + " of PF " + pf_name + " leased to vm '" +
             std::string(vm_name) + "' (pid " + std::to_string(lease.record_.pid) + ")");
    return lease;
  }
  std::string m = "no free VF on PF " + pf_name + ": " + std::to_string(info.vfs.size()) +
                  " enabled, " + std::to_string(live) + " leased by live processes, " +
                  std::to_string(outside) + " on vfio-pci outside iovirt, " +
                  std::to_string(broken) + " failed to reclaim";
  if (!last_error.empty()) m += " (last: " + last_error + ")";
  m += ": enable more VFs or stop a VM";
  return fail(std::move(m), EBUSY);
}

Status VfPool::release(Lease&& lease) {
  if (!lease.held()) return fail("release: lease is not held", EINVAL);
  Lease l = std::move(lease);
  const std::string vf_name = l.vf().to_string();
  if (auto st = give_back(l.vf(), l.record_); !st) {
    // Keep the file: closing the fd makes it stale, and the next allocation retries.
    return std::unexpected(std::move(st.error()).context("release VF " + vf_name));
  }
  if (::unlink(l.file_.c_str()) != 0) return fail_errno("remove lease file " + l.file_.string());
  l.fd_.reset();
  log_info("sriov: VF " + vf_name + " released by vm '" + l.record_.vm + "'");
  return {};
}

Result<std::vector<LeaseStatus>> VfPool::list_leases() const {
  std::vector<LeaseStatus> out;
  if (!sriov_.sysfs().exists(dir_)) return out;
  IOVIRT_TRY_CTX(names, sriov_.sysfs().list(dir_), "list leases");
  for (const auto& n : names) {
    if (!PciAddress::parse(n)) continue;
    LeaseStatus st;
    st.file = dir_ / n;
    Fd fd(::open(st.file.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
      if (errno == ENOENT) continue;  // released meanwhile
      return fail_errno("open lease file " + st.file.string());
    }
    // A shared probe lock conflicts with the holder's exclusive one. While we hold it (briefly),
    // an allocator sees this VF as busy and moves on; that is harmless.
    if (::flock(fd.get(), LOCK_SH | LOCK_NB) == 0) {
      st.alive = false;
      ::flock(fd.get(), LOCK_UN);
    } else if (errno == EWOULDBLOCK) {
      st.alive = true;
    } else {
      return fail_errno("flock lease file " + st.file.string());
    }
    IOVIRT_TRY_CTX(text, read_fd(fd.get()), st.file.string());
    auto rec = LeaseRecord::parse(text);
    if (rec) {
      st.record = std::move(*rec);
    } else {
      log_warn("sriov: " + st.file.string() + ": " + rec.error().message());
    }
    out.push_back(std::move(st));
  }
  return out;
}

}  // namespace iovirt::sriov
