// An eventfd(2): the kernel's 64-bit counter used as a doorbell between threads, the VMM and
// KVM (irqfd, ioeventfd) and other processes (vhost, vhost-user). write() adds, read() drains.
#pragma once

#include <sys/eventfd.h>

#include <cstdint>

#include "iovirt/core/error.hpp"
#include "iovirt/core/fd.hpp"

namespace iovirt {

class EventFd final {
 public:
  // Non-blocking by default so that a reader in an event loop never stalls on a spurious wakeup.
  [[nodiscard]] static Result<EventFd> create(int flags = EFD_CLOEXEC | EFD_NONBLOCK);

  // Adds v to the counter (wakes pollers). Const: signalling does not change which fd this is,
  // and signal paths are often handed a const view.
  Status write(uint64_t v = 1) const;
  // Returns the counter and resets it to 0 (or decrements by 1 with EFD_SEMAPHORE).
  // A non-blocking eventfd with nothing pending returns 0 rather than an error.
  [[nodiscard]] Result<uint64_t> read() const;

  [[nodiscard]] int fd() const { return fd_.get(); }

 private:
  explicit EventFd(Fd fd) : fd_(std::move(fd)) {}
  Fd fd_;
};

}  // namespace iovirt
