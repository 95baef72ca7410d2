// A single-threaded epoll loop for control-path and backend threads: fds with callbacks.
// add/remove/modify belong to the thread that runs the loop (callbacks included); stop() is the
// one call that may come from any thread.
#pragma once

#include <sys/epoll.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

#include "iovirt/core/error.hpp"
#include "iovirt/core/eventfd.hpp"
#include "iovirt/core/fd.hpp"

namespace iovirt {

class EventLoop final {
 public:
  using Callback = std::function<void(uint32_t events)>;

  [[nodiscard]] static Result<EventLoop> create();

  EventLoop(EventLoop&& o) noexcept;
  EventLoop& operator=(EventLoop&& o) noexcept;
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;
  ~EventLoop() = default;

  // Watches fd for `events` (EPOLLIN, EPOLLOUT, EPOLLET, ...); the fd stays owned by the caller,
  // who must remove() it before closing it. Adding an fd twice is an error.
  Status add(int fd, uint32_t events, Callback cb);
  // Changes the event mask of a watched fd (e.g. start/stop waiting for EPOLLOUT).
  Status modify(int fd, uint32_t events);
  // Stops watching fd. Safe from inside any callback, including fd's own: a removed fd's pending
  // events in the current batch are dropped, and its callback lives until the batch ends.
  Status remove(int fd);

  // Waits up to timeout_ms (-1: forever) and dispatches ready callbacks; returns how many ran.
  // Not reentrant: a callback must not call run_once/run.
  [[nodiscard]] Result<int> run_once(int timeout_ms);
  // Dispatches until stop(). Returns an error only if epoll_wait itself fails.
  Status run();
  // Makes run() return after the current batch. Thread-safe and callable from a callback. A stop
  // requested before run() starts makes that run() return at once.
  void stop();

  [[nodiscard]] size_t size() const { return handlers_.size(); }

 private:
  struct Handler {
    int fd;
    bool removed;
    Callback cb;
  };
  static constexpr size_t kMaxEvents = 64;

  EventLoop(Fd epfd, EventFd wake) : epfd_(std::move(epfd)), wake_(std::move(wake)) {}

  Fd epfd_;
  EventFd wake_;  // registered with a null data.ptr; written by stop()
  std::atomic<bool> stop_{false};
  // Handlers are heap objects so epoll_event.data.ptr can point at them: no lookup per event.
  std::unordered_map<int, std::unique_ptr<Handler>> handlers_;
  // Handlers removed during a dispatch batch, freed when the batch ends.
  std::vector<std::unique_ptr<Handler>> retired_;
  bool dispatching_ = false;
  std::array<epoll_event, kMaxEvents> events_{};
};

}  // namespace iovirt
