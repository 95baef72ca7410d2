#include "iovirt/core/eventfd.hpp"

#include <unistd.h>

#include <string>

namespace iovirt {

Result<EventFd> EventFd::create(int flags) {
  int fd = ::eventfd(0, flags);
  if (fd < 0) return fail_errno("eventfd");
  return EventFd(Fd(fd));
}

Status EventFd::write(uint64_t v) const {
  for (;;) {
    ssize_t n = ::write(fd_.get(), &v, sizeof v);
    if (n == static_cast<ssize_t>(sizeof v)) return {};
    if (n < 0 && errno == EINTR) continue;
    // EAGAIN here means the counter would overflow: the reader is not draining.
    if (n < 0) return fail_errno("eventfd write fd " + std::to_string(fd_.get()));
    return fail("eventfd write fd " + std::to_string(fd_.get()) + ": short write");
  }
}

Result<uint64_t> EventFd::read() const {
  for (;;) {
    uint64_t v = 0;
    ssize_t n = ::read(fd_.get(), &v, sizeof v);
    if (n == static_cast<ssize_t>(sizeof v)) return v;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return 0;
    if (n < 0) return fail_errno("eventfd read fd " + std::to_string(fd_.get()));
    return fail("eventfd read fd " + std::to_string(fd_.get()) + ": short read");
  }
}

}  // namespace iovirt
