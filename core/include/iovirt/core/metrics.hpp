// Counters, gauges and histograms, exposed in the Prometheus text format (0.0.4).
//
// The data path holds a reference to its metric, obtained once at setup; an update is one
// relaxed atomic operation, with no lookup and no lock. The registry's lock is taken only to
// register a metric and to render the exposition.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace iovirt {

using Labels = std::vector<std::pair<std::string, std::string>>;

class Counter final {
 public:
  Counter() = default;
  Counter(const Counter&) = delete;
  Counter& operator=(const Counter&) = delete;

  void inc(uint64_t n = 1) { v_.fetch_add(n, std::memory_order_relaxed); }
  [[nodiscard]] uint64_t value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> v_{0};
};

class Gauge final {
 public:
  Gauge() = default;
  Gauge(const Gauge&) = delete;
  Gauge& operator=(const Gauge&) = delete;

  void set(int64_t v) { v_.store(v, std::memory_order_relaxed); }
  void add(int64_t d) { v_.fetch_add(d, std::memory_order_relaxed); }
  [[nodiscard]] int64_t value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> v_{0};
};

// Buckets are "value <= bound" with fixed bounds; the +Inf bucket is implicit.
class Histogram final {
 public:
  // bounds: strictly increasing, no NaN; a trailing +Inf is accepted and dropped.
  // Throws std::invalid_argument otherwise.
  explicit Histogram(std::vector<double> bounds);
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  // A linear scan over the bounds (histograms have a handful) and two relaxed atomic adds.
  void observe(double v);

  [[nodiscard]] const std::vector<double>& bounds() const { return bounds_; }
  // Per-bucket (not cumulative) count; index bounds().size() is the +Inf bucket.
  [[nodiscard]] uint64_t bucket_count(size_t i) const {
    return buckets_[i].load(std::memory_order_relaxed);
  }
  // The sum of all buckets, so count and buckets always agree in one exposition.
  [[nodiscard]] uint64_t count() const;
  [[nodiscard]] double sum() const { return sum_.load(std::memory_order_relaxed); }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_.size() + 1
  std::atomic<double> sum_{0.0};
};

// Owns every metric; handles stay valid for the registry's lifetime. Registration errors (bad
// names, a name reused with another type or other buckets) are programming errors on the
// control path and throw std::invalid_argument.
class MetricsRegistry final {
 public:
  MetricsRegistry() = default;
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  // The same name and label set (in any order) returns the same object. The help text of the
  // first registration of a name is kept.
  Counter& counter(std::string name, std::string help, Labels labels = {});
  Gauge& gauge(std::string name, std::string help, Labels labels = {});
  Histogram& histogram(std::string name, std::string help, std::vector<double> bounds,
                       Labels labels = {});

  // Families in registration order, series in registration order, labels sorted by name.
  [[nodiscard]] std::string expose() const;

 private:
  enum class Type { Counter, Gauge, Histogram };
  struct Series {
    Labels labels;  // sorted by name
    std::unique_ptr<Counter> counter;
    std::unique_ptr<Gauge> gauge;
    std::unique_ptr<Histogram> histogram;
  };
  struct Family {
    std::string name;
    std::string help;
    Type type;
    std::vector<double> bounds;  // histograms only
    std::vector<std::unique_ptr<Series>> series;
    std::map<Labels, Series*> by_labels;
  };

  static const char* type_name(Type t);
  Series& series(std::string name, std::string help, Type type, Labels labels,
                 const std::vector<double>* bounds);

  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Family>> families_;
  std::map<std::string, Family*, std::less<>> by_name_;
};

}  // namespace iovirt
