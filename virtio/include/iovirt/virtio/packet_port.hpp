// Where a virtio-net device's frames go when they do not go to a tap: the packet I/O side of
// `iovirt-vhost net` (ring-loopback, sink, source, a DPDK ethdev port).
//
// The device side (net_port_backend.cpp) copies every frame the guest sends out of guest memory
// into a buffer the port owns (alloc + transmit), and every frame the port receives into the
// guest's buffers (receive + release): the same work per packet as DPDK's vhost library does
// with mbufs. Frames carry no virtio_net_hdr: the device strips it on transmit and writes one on
// receive. Ports see only whole frames; they never see guest memory.
//
// One port instance serves one queue pair and is driven by one thread (the pair's worker), so a
// port needs no locking of its own unless it shares state between pairs.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "iovirt/core/error.hpp"

namespace iovirt::virtio {

// A frame buffer owned by a port. `data` holds `cap` bytes; `len` of them are the frame.
// `cookie` is the port's own handle (an rte_mbuf*, a slot index).
struct PacketBuf {
  uint8_t* data = nullptr;
  uint32_t len = 0;
  uint32_t cap = 0;
  void* cookie = nullptr;
};

class PacketPort {
 public:
  virtual ~PacketPort() = default;

  // For logs: "ring-loopback", "sink", "dpdk port 0 queue 1".
  [[nodiscard]] virtual std::string describe() const = 0;

  // ---- guest -> port ----
  // Fills `bufs` with empty buffers (len 0); returns how many (fewer when the port is out).
  virtual uint32_t alloc(std::span<PacketBuf> bufs) = 0;
  // Takes the filled buffers (the port owns them from here: sent, queued or freed).
  virtual void transmit(std::span<PacketBuf> bufs) = 0;

  // ---- port -> guest ----
  // Receives up to bufs.size() frames; the caller owns them until release().
  virtual uint32_t receive(std::span<PacketBuf> bufs) = 0;
  // Gives back buffers from alloc() or receive() that are done with.
  virtual void release(std::span<PacketBuf> bufs) = 0;

  // How the worker learns that receive() may return something:
  //   >= 0: this fd becomes readable (epoll);
  //   kRxAfterTransmit: only as a result of this port's own transmit() (loopback) or always
  //     (a generator): the worker tries receive() whenever the guest has rx buffers;
  //   kRxPolled: frames arrive from outside with no fd (a NIC PMD): the worker never sleeps.
  static constexpr int kRxAfterTransmit = -1;
  static constexpr int kRxPolled = -2;
  [[nodiscard]] virtual int rx_wake() const = 0;

  // Largest frame a buffer holds (frames above it are dropped on transmit).
  [[nodiscard]] virtual uint32_t max_frame() const = 0;
};

// Makes the port of queue pair `pair` (of `pairs`), called when the driver activates the device.
using PacketPortFactory =
    std::function<Result<std::unique_ptr<PacketPort>>(uint16_t pair, uint16_t pairs)>;

// ---- Built-in ports (packet_ports.cpp) ----

// Every frame transmitted comes back as a received frame on the same pair (io-forward to itself,
// like testpmd's io mode on one port). `depth` frames (at most 2^20) queue at most; more are
// dropped.
std::unique_ptr<PacketPort> make_loopback_port(uint32_t depth = 1024);

// Drops every frame transmitted after it was copied into the port's buffer (testpmd rxonly).
// Counts them.
struct SinkCounters {
  uint64_t frames = 0;
  uint64_t bytes = 0;
};
std::unique_ptr<PacketPort> make_sink_port(std::shared_ptr<SinkCounters> counters = {});

// Generates frames of `frame_len` bytes (60..1514): broadcast Ethernet, IPv4/UDP, a sequence
// number in the payload; as many as the guest has buffers for (testpmd txonly).
std::unique_ptr<PacketPort> make_source_port(uint32_t frame_len = 60);

}  // namespace iovirt::virtio
