// Builds the virtio devices the command line asked for (--disk, --net): the device model with
// its backend, and the feature mask its ring options imply for the virtio-pci transport.
#pragma once

#include <memory>
#include <string>

#include "iovirt/core/error.hpp"
#include "iovirt/core/metrics.hpp"
#include "iovirt/virtio/device.hpp"
#include "iovirt/virtio/pci_transport.hpp"
#include "iovirt/vmm/config.hpp"

namespace iovirt {

Result<std::unique_ptr<virtio::VirtioDevice>> make_virtio_disk(const DiskOption& opt,
                                                               MetricsRegistry& metrics,
                                                               const std::string& name);
Result<std::unique_ptr<virtio::VirtioDevice>> make_virtio_net(const NetOption& opt,
                                                              MetricsRegistry& metrics,
                                                              const std::string& name);
// Feature bits the ring options withhold from the guest.
virtio::VirtioPciOptions transport_options(const RingOptions& ring);

}  // namespace iovirt
