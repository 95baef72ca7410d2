// The virtio-blk request parser (virtio 1.2 section 5.2.6); see blk_request.hpp.
#include "iovirt/virtio/blk_request.hpp"

#include <algorithm>
#include <cstring>

namespace iovirt::virtio::blk {

namespace {

// Calls f(gpa, len) for each piece of the bytes [from, from + len) of the chain's readable
// (write == false) or writable (write == true) byte stream, skipping empty pieces. Stops and
// returns false as soon as f does.
template <class F>
bool for_each_piece(std::span<const Segment> segs, bool write, uint64_t from, uint64_t len, F&& f) {
  const uint64_t end = from + len;  // both bounded by the chain length (< 2^32): no overflow
  uint64_t pos = 0;
  for (const Segment& s : segs) {
    if (s.write != write) continue;
    const uint64_t seg_end = pos + s.len;
    const uint64_t lo = std::max(pos, from);
    const uint64_t hi = std::min(seg_end, end);
    if (lo < hi && !f(s.addr + (lo - pos), hi - lo)) return false;
    pos = seg_end;
    if (pos >= end) break;
  }
  return true;
}

// Copies bytes [from, from + out.size()) of a byte stream out of guest memory.
bool copy_from_chain(const GuestMemory& mem, std::span<const Segment> segs, bool write,
                     uint64_t from, std::span<uint8_t> out) {
  size_t done = 0;
  return for_each_piece(segs, write, from, out.size(), [&](uint64_t gpa, uint64_t n) {
    if (!mem.read(gpa, out.subspan(done, n))) return false;
    done += n;
    return true;
  });
}

// Points storage iovecs at bytes [from, from + len) of a byte stream (zero copy). Returns why it
// could not, or nullptr.
const char* gather(const GuestMemory& mem, std::span<const Segment> segs, bool write, uint64_t from,
                   uint64_t len, std::span<iovec> iov, uint32_t& count) {
  count = 0;
  const char* why = nullptr;
  for_each_piece(segs, write, from, len, [&](uint64_t gpa, uint64_t n) {
    if (count >= iov.size()) {
      why = "more data segments than seg_max";
      return false;
    }
    auto s = mem.span(gpa, n);
    if (!s) {
      why = "data segment outside guest memory";
      return false;
    }
    iov[count++] = iovec{s->data(), n};
    return true;
  });
  return why;
}

// Sector range check without overflow: [sector, sector + bytes / 512) within the capacity.
const char* check_range(uint64_t sector, uint64_t bytes, uint64_t capacity) {
  if (bytes % kSectorSize != 0) return "data length not a multiple of 512";
  const uint64_t sectors = bytes >> kSectorShift;
  if (sector > capacity || sectors > capacity - sector) return "sector range beyond the capacity";
  return nullptr;
}

BlkRequest& refuse(BlkRequest& r, uint8_t status, const char* reason) {
  r.status = status;
  r.reason = reason;
  return r;
}

void parse_ranges(const GuestMemory& mem, std::span<const Segment> segs, uint64_t readable,
                  const BlkLimits& lim, const BlkRequestStorage& st, BlkRequest& r) {
  const bool discard = r.op == BlkOp::Discard;
  if (!(discard ? lim.discard : lim.write_zeroes)) {
    refuse(r, VIRTIO_BLK_S_UNSUPP, "discard/write zeroes not negotiated");
    return;
  }
  if (lim.readonly) {
    refuse(r, VIRTIO_BLK_S_IOERR, "discard/write zeroes on a read-only disk");
    return;
  }
  const uint64_t payload = readable - sizeof(BlkReqHeader);
  if (payload == 0 || payload % sizeof(BlkDiscardWriteZeroes) != 0) {
    refuse(r, VIRTIO_BLK_S_IOERR, "discard/write zeroes payload not a multiple of 16 bytes");
    return;
  }
  const uint64_t n = payload / sizeof(BlkDiscardWriteZeroes);
  const uint32_t max_seg = discard ? lim.max_discard_seg : lim.max_write_zeroes_seg;
  const uint32_t max_sectors = discard ? lim.max_discard_sectors : lim.max_write_zeroes_sectors;
  if (n > max_seg || n > st.ranges.size()) {
    refuse(r, VIRTIO_BLK_S_IOERR, "more discard/write zeroes segments than advertised");
    return;
  }
  uint32_t count = 0;
  for (uint64_t i = 0; i < n; ++i) {
    BlkDiscardWriteZeroes d{};
    std::span<uint8_t> bytes(reinterpret_cast<uint8_t*>(&d), sizeof(d));
    if (!copy_from_chain(mem, segs, false, sizeof(BlkReqHeader) + i * sizeof(d), bytes)) {
      refuse(r, VIRTIO_BLK_S_IOERR, "discard/write zeroes segment unreadable");
      return;
    }
    // Section 5.2.6.2: unknown flags, and unmap on a discard, are not supported.
    if ((d.flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) != 0 ||
        (discard && (d.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) != 0)) {
      refuse(r, VIRTIO_BLK_S_UNSUPP, "discard/write zeroes segment with unsupported flags");
      return;
    }
    if (d.num_sectors > max_sectors) {
      refuse(r, VIRTIO_BLK_S_IOERR, "discard/write zeroes segment above the sector maximum");
      return;
    }
    const uint64_t len = uint64_t{d.num_sectors} << kSectorShift;
    if (const char* why = check_range(d.sector, len, lim.capacity_sectors)) {
      refuse(r, VIRTIO_BLK_S_IOERR, why);
      return;
    }
    if (len == 0) continue;  // nothing to do; fallocate would refuse a zero length
    st.ranges[count++] = BlkRange{d.sector << kSectorShift, len,
                                  (d.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) != 0};
  }
  r.range_count = count;
  r.status = VIRTIO_BLK_S_OK;
}

}  // namespace

const char* to_string(BlkOp op) {
  switch (op) {
    case BlkOp::Read:
      return "read";
    case BlkOp::Write:
      return "write";
    case BlkOp::Flush:
      return "flush";
    case BlkOp::GetId:
      return "get_id";
    case BlkOp::Discard:
      return "discard";
    case BlkOp::WriteZeroes:
      return "write_zeroes";
    case BlkOp::Other:
      return "other";
  }
  return "other";
}

BlkRequest parse_request(const GuestMemory& mem, std::span<const Segment> segs,
                         const BlkLimits& lim, const BlkRequestStorage& st) {
  BlkRequest r;
  uint64_t readable = 0;
  uint64_t writable = 0;
  const Segment* status_seg = nullptr;  // the last non-empty writable segment
  for (const Segment& s : segs) {
    if (s.write) {
      writable += s.len;
      if (s.len != 0) status_seg = &s;
    } else {
      readable += s.len;
    }
  }
  // Section 5.2.6: the status byte is the last device-writable byte of the chain.
  if (status_seg == nullptr) {
    r.reason = "no device-writable status byte";
    return r;
  }
  auto status = mem.span(status_seg->addr + status_seg->len - 1, 1);
  if (!status) {
    r.reason = "status byte outside guest memory";
    return r;
  }
  r.status_ptr = status->data();

  if (readable < sizeof(BlkReqHeader))
    return refuse(r, VIRTIO_BLK_S_IOERR, "header shorter than 16 bytes");
  BlkReqHeader h{};
  std::span<uint8_t> hb(reinterpret_cast<uint8_t*>(&h), sizeof(h));
  if (!copy_from_chain(mem, segs, false, 0, hb))
    return refuse(r, VIRTIO_BLK_S_IOERR, "header unreadable");
  const uint64_t data_out = readable - sizeof(BlkReqHeader);  // driver -> device bytes
  const uint64_t data_in = writable - 1;                      // device -> driver bytes

  switch (h.type) {
    case VIRTIO_BLK_T_IN: {
      r.op = BlkOp::Read;
      if (data_out != 0)
        return refuse(r, VIRTIO_BLK_S_IOERR, "read request with device-readable data");
      if (const char* why = check_range(h.sector, data_in, lim.capacity_sectors)) {
        return refuse(r, VIRTIO_BLK_S_IOERR, why);
      }
      if (const char* why = gather(mem, segs, true, 0, data_in, st.iov, r.iov_count)) {
        return refuse(r, VIRTIO_BLK_S_IOERR, why);
      }
      r.offset = h.sector << kSectorShift;
      r.data_len = data_in;
      r.status = VIRTIO_BLK_S_OK;
      return r;
    }
    case VIRTIO_BLK_T_OUT: {
      r.op = BlkOp::Write;
      if (lim.readonly) return refuse(r, VIRTIO_BLK_S_IOERR, "write to a read-only disk");
      if (data_in != 0)
        return refuse(r, VIRTIO_BLK_S_IOERR, "write request with device-writable data");
      if (const char* why = check_range(h.sector, data_out, lim.capacity_sectors)) {
        return refuse(r, VIRTIO_BLK_S_IOERR, why);
      }
      if (const char* why =
              gather(mem, segs, false, sizeof(BlkReqHeader), data_out, st.iov, r.iov_count)) {
        return refuse(r, VIRTIO_BLK_S_IOERR, why);
      }
      r.offset = h.sector << kSectorShift;
      r.data_len = data_out;
      r.status = VIRTIO_BLK_S_OK;
      return r;
    }
    case VIRTIO_BLK_T_FLUSH:
      // The sector is ignored (section 5.2.6.1: the driver sets it to 0); no data moves.
      r.op = BlkOp::Flush;
      r.status = VIRTIO_BLK_S_OK;
      return r;
    case VIRTIO_BLK_T_GET_ID: {
      // Up to 20 bytes of ID; a shorter buffer gets a truncated ID (no NUL needed, 5.2.6).
      r.op = BlkOp::GetId;
      const uint64_t n = std::min<uint64_t>(data_in, VIRTIO_BLK_ID_BYTES);
      if (const char* why = gather(mem, segs, true, 0, n, st.iov, r.iov_count)) {
        return refuse(r, VIRTIO_BLK_S_IOERR, why);
      }
      r.data_len = n;
      r.status = VIRTIO_BLK_S_OK;
      return r;
    }
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
      r.op = h.type == VIRTIO_BLK_T_DISCARD ? BlkOp::Discard : BlkOp::WriteZeroes;
      if (data_in != 0) {
        return refuse(r, VIRTIO_BLK_S_IOERR, "discard/write zeroes with device-writable data");
      }
      parse_ranges(mem, segs, readable, lim, st, r);
      return r;
    default:
      r.op = BlkOp::Other;
      return refuse(r, VIRTIO_BLK_S_UNSUPP, "unsupported request type");
  }
}

}  // namespace iovirt::virtio::blk
