// A queue an interop test drives as the guest's driver and hands to a vhost-user front-end: the
// device-side Virtqueue the front-end programs into the back-end, the driver's view of the same
// ring in guest memory (split or packed), and the queue's kick eventfd; DrivenDevice holds a
// device's queues and activates the front-end with them. Shared by the fixtures that play the
// guest against a real back-end (qemu-storage-daemon, iovirt-vhost, testpmd).
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "call_interrupt.hpp"
#include "iovirt/core/error.hpp"
#include "iovirt/core/eventfd.hpp"
#include "iovirt/core/guest_memory.hpp"
#include "iovirt/virtio/device.hpp"
#include "iovirt/virtio/testing/driver_packed_queue.hpp"
#include "iovirt/virtio/testing/driver_queue.hpp"
#include "iovirt/virtio/vhost_user/frontend.hpp"
#include "iovirt/virtio/virtqueue.hpp"

namespace iovirt::virtio::testing {

struct DrivenUsed {
  uint16_t id;
  uint32_t len;
};

class DrivenQueue final {
 public:
  // The largest size whose split ring fits the 4 KiB steps between the areas.
  static constexpr uint16_t kMaxSize = 256;

  // A ring of `size` entries at ring_base: descriptors there, the driver area at +0x1000, the
  // device area at +0x2000.
  static Result<DrivenQueue> create(const GuestMemory& mem, uint16_t size, uint64_t ring_base,
                                    bool packed) {
    if (size == 0 || size > kMaxSize)
      return fail("driven queue: size " + std::to_string(size) + " outside 1..256", EINVAL);
    auto vq = Virtqueue::create(size);
    if (!vq) return std::unexpected(std::move(vq.error()));
    if (auto st = vq->set_format(packed ? RingFormat::Packed : RingFormat::Split); !st)
      return std::unexpected(std::move(st.error()));
    if (auto st = vq->set_size(size); !st) return std::unexpected(std::move(st.error()));
    const uint64_t driver = ring_base + 0x1000, device = ring_base + 0x2000;
    vq->set_desc_area(ring_base);
    vq->set_driver_area(driver);
    vq->set_device_area(device);
    vq->set_ready(true);
    auto kick = EventFd::create();
    if (!kick) return std::unexpected(std::move(kick.error()));
    DrivenQueue q(std::move(*vq), std::move(*kick));
    if (packed) {
      auto d = DriverPackedQueue::create(mem, DriverPackedLayout{size, ring_base, driver, device});
      if (!d) return std::unexpected(std::move(d.error()));
      q.packed_.emplace(std::move(*d));
    } else {
      auto d = DriverQueue::create(mem, DriverQueueLayout{size, ring_base, driver, device});
      if (!d) return std::unexpected(std::move(d.error()));
      q.split_.emplace(std::move(*d));
    }
    return q;
  }

  // What ActivateContext takes for queue `index`. It points into this object: keep the object
  // where it is while the front-end uses the queue.
  [[nodiscard]] QueueBinding binding(uint16_t index) {
    return QueueBinding{index, &vq_, kick_.fd()};
  }

  // Makes the chain available, then kicks. Returns its id (the split ring's head).
  Result<uint16_t> add_and_kick(std::span<const Buf> bufs) {
    auto id = packed_ ? packed_->add_chain(bufs) : split_->add_chain(bufs);
    if (!id) return id;
    if (auto st = kick_.write(1); !st) return std::unexpected(std::move(st.error()));
    return id;
  }
  // The next used buffer, or nullopt.
  Result<std::optional<DrivenUsed>> take_used() {
    if (packed_) {
      auto u = packed_->take_used();
      if (!u) return std::unexpected(std::move(u.error()));
      if (!*u) return std::nullopt;
      return DrivenUsed{(*u)->id, (*u)->len};
    }
    auto u = split_->take_used();
    if (!u) return std::unexpected(std::move(u.error()));
    if (!*u) return std::nullopt;
    return DrivenUsed{static_cast<uint16_t>((*u)->id), (*u)->len};
  }

 private:
  DrivenQueue(Virtqueue vq, EventFd kick) : vq_(std::move(vq)), kick_(std::move(kick)) {}

  Virtqueue vq_;
  EventFd kick_;
  std::optional<DriverQueue> split_;
  std::optional<DriverPackedQueue> packed_;
};

// The guest side of a device: its queues, the call eventfd standing in for KVM's irqfd, and
// what the front-end reports through ActivateContext::fail. The front-end keeps pointers into
// it: keep it where it is while the front-end runs.
class DrivenDevice final {
 public:
  // Adds the next queue (numbered in the order added) with its rings at ring_base (see
  // DrivenQueue::create()).
  Result<DrivenQueue*> add_queue(const GuestMemory& mem, uint16_t size, uint64_t ring_base,
                                 bool packed) {
    auto q = DrivenQueue::create(mem, size, ring_base, packed);
    if (!q) return std::unexpected(std::move(q.error()));
    queues_.push_back(std::make_unique<DrivenQueue>(std::move(*q)));
    return queues_.back().get();
  }

  // The features are negotiated: hands guest memory, every queue and the call eventfd to the
  // front-end.
  Status activate(vhost_user::Frontend& frontend, const GuestMemory& mem, uint64_t features) {
    auto call = EventFd::create();
    if (!call) return std::unexpected(std::move(call.error()));
    irq_ = std::make_unique<CallInterrupt>(std::move(*call));
    ActivateContext ctx;
    ctx.mem = &mem;
    ctx.features = features;
    for (size_t i = 0; i < queues_.size(); ++i)
      ctx.queues.push_back(queues_[i]->binding(static_cast<uint16_t>(i)));
    ctx.irq = irq_.get();
    ctx.fail = [this](const std::string& why) {
      const std::lock_guard<std::mutex> lock(mu_);
      failure_ = why;
    };
    return frontend.activate(std::move(ctx));
  }

  // Waits up to `ms` for a call from the back-end (any queue); true if one came.
  bool wait_call(int ms) const { return irq_ && irq_->wait(ms); }
  // Empty unless the front-end failed the device.
  std::string failure() const {
    const std::lock_guard<std::mutex> lock(mu_);
    return failure_;
  }

 private:
  std::vector<std::unique_ptr<DrivenQueue>> queues_;  // the bindings point into them
  std::unique_ptr<CallInterrupt> irq_;
  mutable std::mutex mu_;  // the front-end reports from its own thread
  std::string failure_;
};

}  // namespace iovirt::virtio::testing
