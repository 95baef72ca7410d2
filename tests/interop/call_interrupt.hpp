// The call fd a vhost-user back-end writes, for interop tests that play the guest driver: one
// eventfd the test polls, standing in for KVM's irqfd.
#pragma once

#include <poll.h>

#include "iovirt/core/eventfd.hpp"
#include "iovirt/virtio/device.hpp"

namespace iovirt::virtio::testing {

class CallInterrupt final : public VirtioInterrupt {
 public:
  explicit CallInterrupt(EventFd fd) : fd_(std::move(fd)) {}
  void notify_queue(uint16_t) override {}
  void notify_config() override {}
  int queue_irqfd(uint16_t) override { return fd_.fd(); }
  int fd() const { return fd_.fd(); }
  // Waits up to `ms` for the back-end's call and drains it; true if one came.
  bool wait(int ms) const {
    pollfd p{fd_.fd(), POLLIN, 0};
    if (::poll(&p, 1, ms) <= 0) return false;
    return fd_.read().has_value();
  }

 private:
  EventFd fd_;
};

}  // namespace iovirt::virtio::testing
