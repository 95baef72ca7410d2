#include "iovirt/virtio/virtqueue.hpp"

namespace iovirt::virtio {

Result<Virtqueue> Virtqueue::create(uint16_t max_size) {
  auto split = SplitQueue::create(max_size);
  if (!split) return std::unexpected(std::move(split.error()));
  return Virtqueue(std::move(*split));
}

Status Virtqueue::set_format(RingFormat f) {
  if (f == RingFormat::Packed) return fail("virtqueue: the packed ring is not implemented yet", ENOTSUP);
  format_ = f;
  split_.reset();
  return {};
}

}  // namespace iovirt::virtio
