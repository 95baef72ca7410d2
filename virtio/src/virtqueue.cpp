#include "iovirt/virtio/virtqueue.hpp"

namespace iovirt::virtio {

Result<Virtqueue> Virtqueue::create(uint16_t max_size) {
  auto split = SplitQueue::create(max_size);
  if (!split) return std::unexpected(std::move(split.error()));
  auto packed = PackedQueue::create(max_size);
  if (!packed) return std::unexpected(std::move(packed.error()));
  return Virtqueue(std::move(*split), std::move(*packed));
}

Status Virtqueue::set_format(RingFormat f) {
  format_ = f;
  split_.reset();
  packed_.reset();
  return {};
}

}  // namespace iovirt::virtio
