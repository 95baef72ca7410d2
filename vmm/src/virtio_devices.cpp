#include "iovirt/vmm/virtio_devices.hpp"

#include "iovirt/virtio/blk.hpp"
#include "iovirt/virtio/net.hpp"
#include "iovirt/virtio/ring.hpp"
#include "iovirt/virtio/vhost_user/frontend.hpp"

namespace iovirt {

Result<std::unique_ptr<virtio::VirtioDevice>> make_virtio_disk(const DiskOption& opt,
                                                               MetricsRegistry& metrics,
                                                               const std::string& name) {
  if (!opt.vhost_user.empty()) {
    virtio::vhost_user::FrontendOptions f;
    f.socket = opt.vhost_user;
    f.name = name;
    f.device_id = virtio::kDeviceIdBlock;
    f.queues = opt.queues;
    f.queue_size = opt.ring.queue_size;
    f.packed = opt.ring.packed;
    auto dev = virtio::vhost_user::Frontend::connect(std::move(f), metrics);
    if (!dev) return std::unexpected(std::move(dev.error()));
    return std::unique_ptr<virtio::VirtioDevice>(std::move(*dev));
  }
  virtio::BlkConfig c;
  c.path = opt.path;
  c.readonly = opt.readonly;
  c.direct = opt.direct;
  c.queues = opt.queues;
  c.queue_size = opt.ring.queue_size;
  c.serial = opt.serial;
  c.io = virtio::parse_blk_io(opt.io).value_or(virtio::BlkIo::Auto);
  auto dev = virtio::VirtioBlk::create(c, metrics, name);
  if (!dev) return std::unexpected(std::move(dev.error()));
  return std::unique_ptr<virtio::VirtioDevice>(std::move(*dev));
}

Result<std::unique_ptr<virtio::VirtioDevice>> make_virtio_net(const NetOption& opt,
                                                              MetricsRegistry& metrics,
                                                              const std::string& name) {
  if (!opt.vhost_user.empty()) {
    virtio::vhost_user::FrontendOptions f;
    f.socket = opt.vhost_user;
    f.name = name;
    f.device_id = virtio::kDeviceIdNet;
    f.queues = opt.queues;
    f.queue_size = opt.ring.queue_size;
    f.packed = opt.ring.packed;
    if (opt.mac) {
      f.mac = *opt.mac;
    } else {
      auto mac = virtio::random_mac();
      if (!mac) return std::unexpected(std::move(mac.error()).context(name));
      f.mac = *mac;
    }
    auto dev = virtio::vhost_user::Frontend::connect(std::move(f), metrics);
    if (!dev) return std::unexpected(std::move(dev.error()));
    return std::unique_ptr<virtio::VirtioDevice>(std::move(*dev));
  }
  virtio::NetConfig c;
  c.tap = opt.tap;
  c.mac = opt.mac;
  c.queue_pairs = opt.queues;
  c.vhost = opt.vhost;
  c.queue_size = opt.ring.queue_size;
  auto dev = virtio::VirtioNet::create(c, metrics, name);
  if (!dev) return std::unexpected(std::move(dev.error()));
  return std::unique_ptr<virtio::VirtioDevice>(std::move(*dev));
}

virtio::VirtioPciOptions transport_options(const RingOptions& ring) {
  virtio::VirtioPciOptions o;
  if (!ring.packed) o.features_off |= virtio::feature_bit(virtio::VIRTIO_F_RING_PACKED);
  if (!ring.event_idx) o.features_off |= virtio::feature_bit(virtio::VIRTIO_F_EVENT_IDX);
  if (!ring.indirect) o.features_off |= virtio::feature_bit(virtio::VIRTIO_F_INDIRECT_DESC);
  return o;
}

}  // namespace iovirt
