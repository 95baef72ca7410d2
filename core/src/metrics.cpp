#include "iovirt/core/metrics.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <stdexcept>

namespace iovirt {

namespace {

bool valid_name(const std::string& s, bool allow_colon) {
  if (s.empty()) return false;
  auto ok = [&](char c, bool first) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') return true;
    if (allow_colon && c == ':') return true;
    return !first && c >= '0' && c <= '9';
  };
  for (size_t i = 0; i < s.size(); ++i)
    if (!ok(s[i], i == 0)) return false;
  return true;
}

std::vector<double> normalize_bounds(std::vector<double> bounds) {
  if (!bounds.empty() && std::isinf(bounds.back()) && bounds.back() > 0) bounds.pop_back();
  for (size_t i = 0; i < bounds.size(); ++i) {
    if (std::isnan(bounds[i])) throw std::invalid_argument("histogram bound is NaN");
    if (std::isinf(bounds[i])) throw std::invalid_argument("histogram bound is infinite");
    if (i > 0 && !(bounds[i - 1] < bounds[i]))
      throw std::invalid_argument("histogram bounds are not strictly increasing");
  }
  return bounds;
}

// Prometheus floats: shortest text that reads back to the same double, and its spellings of
// the special values.
std::string format_double(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  (void)ec;  // 32 bytes always fit a shortest double
  return std::string(buf, end);
}

void append_escaped(std::string& out, const std::string& s, bool quote) {
  for (char c : s) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '"':
        if (quote) {
          out += "\\\"";
          break;
        }
        [[fallthrough]];
      default:
        out += c;
    }
  }
}

// `name{k="v",...,extra_k="extra_v"}` or just `name` when there are no labels.
void append_series_name(std::string& out, const std::string& name, const Labels& labels,
                        const char* extra_key = nullptr, const std::string& extra_value = {}) {
  out += name;
  if (labels.empty() && extra_key == nullptr) return;
  out += '{';
  bool first = true;
  auto one = [&](const std::string& k, const std::string& v) {
    if (!first) out += ',';
    first = false;
    out += k;
    out += "=\"";
    append_escaped(out, v, true);
    out += '"';
  };
  for (const auto& [k, v] : labels) one(k, v);
  if (extra_key != nullptr) one(extra_key, extra_value);
  out += '}';
}

}  // namespace

const char* MetricsRegistry::type_name(Type t) {
  switch (t) {
    case Type::Counter:
      return "counter";
    case Type::Gauge:
      return "gauge";
    case Type::Histogram:
      return "histogram";
  }
  return "untyped";
}

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(normalize_bounds(std::move(bounds))),
      buckets_(std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1)) {}

void Histogram::observe(double v) {
  size_t i = 0;
  // NaN compares false with every bound and so lands in +Inf, where Prometheus clients put it.
  while (i < bounds_.size() && !(v <= bounds_[i])) ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
}

uint64_t Histogram::count() const {
  uint64_t n = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) n += bucket_count(i);
  return n;
}

MetricsRegistry::Series& MetricsRegistry::series(std::string name, std::string help, Type type,
                                                 Labels labels, const std::vector<double>* bounds) {
  if (!valid_name(name, true))
    throw std::invalid_argument("metric name '" + name + "' is not [a-zA-Z_:][a-zA-Z0-9_:]*");
  for (const auto& [k, v] : labels) {
    if (!valid_name(k, false))
      throw std::invalid_argument("metric " + name + ": label name '" + k +
                                  "' is not [a-zA-Z_][a-zA-Z0-9_]*");
    if (k.starts_with("__"))
      throw std::invalid_argument("metric " + name + ": label name '" + k + "' is reserved");
    if (type == Type::Histogram && k == "le")
      throw std::invalid_argument("metric " + name + ": histogram label 'le' is reserved");
  }
  // One canonical order, so {a,b} and {b,a} name the same series.
  std::sort(labels.begin(), labels.end());
  for (size_t i = 1; i < labels.size(); ++i)
    if (labels[i - 1].first == labels[i].first)
      throw std::invalid_argument("metric " + name + ": label '" + labels[i].first +
                                  "' given twice");

  std::lock_guard lock(mu_);
  Family* fam;
  if (auto it = by_name_.find(name); it != by_name_.end()) {
    fam = it->second;
    if (fam->type != type)
      throw std::invalid_argument("metric " + name + " is already registered as a " +
                                  type_name(fam->type));
    if (bounds != nullptr && fam->bounds != *bounds)
      throw std::invalid_argument("histogram " + name +
                                  " is already registered with other bucket bounds");
  } else {
    auto f = std::make_unique<Family>();
    f->name = name;
    f->help = std::move(help);
    f->type = type;
    if (bounds != nullptr) f->bounds = *bounds;
    fam = f.get();
    families_.push_back(std::move(f));
    by_name_.emplace(std::move(name), fam);
  }

  if (auto it = fam->by_labels.find(labels); it != fam->by_labels.end()) return *it->second;
  auto s = std::make_unique<Series>();
  s->labels = labels;
  switch (type) {
    case Type::Counter:
      s->counter = std::make_unique<Counter>();
      break;
    case Type::Gauge:
      s->gauge = std::make_unique<Gauge>();
      break;
    case Type::Histogram:
      s->histogram = std::make_unique<Histogram>(fam->bounds);
      break;
  }
  Series& ref = *s;
  fam->series.push_back(std::move(s));
  fam->by_labels.emplace(std::move(labels), &ref);
  return ref;
}

Counter& MetricsRegistry::counter(std::string name, std::string help, Labels labels) {
  return *series(std::move(name), std::move(help), Type::Counter, std::move(labels), nullptr)
              .counter;
}

Gauge& MetricsRegistry::gauge(std::string name, std::string help, Labels labels) {
  return *series(std::move(name), std::move(help), Type::Gauge, std::move(labels), nullptr).gauge;
}

Histogram& MetricsRegistry::histogram(std::string name, std::string help,
                                      std::vector<double> bounds, Labels labels) {
  const std::vector<double> norm = normalize_bounds(std::move(bounds));
  return *series(std::move(name), std::move(help), Type::Histogram, std::move(labels), &norm)
              .histogram;
}

std::string MetricsRegistry::expose() const {
  std::lock_guard lock(mu_);
  std::string out;
  for (const auto& fam : families_) {
    if (!fam->help.empty()) {
      out += "# HELP " + fam->name + ' ';
      append_escaped(out, fam->help, false);
      out += '\n';
    }
    out += "# TYPE " + fam->name + ' ' + type_name(fam->type) + '\n';
    for (const auto& s : fam->series) {
      switch (fam->type) {
        case Type::Counter:
          append_series_name(out, fam->name, s->labels);
          out += ' ' + std::to_string(s->counter->value()) + '\n';
          break;
        case Type::Gauge:
          append_series_name(out, fam->name, s->labels);
          out += ' ' + std::to_string(s->gauge->value()) + '\n';
          break;
        case Type::Histogram: {
          const Histogram& h = *s->histogram;
          const std::string bucket = fam->name + "_bucket";
          uint64_t cumulative = 0;
          for (size_t i = 0; i <= h.bounds().size(); ++i) {
            cumulative += h.bucket_count(i);
            const std::string le = i < h.bounds().size() ? format_double(h.bounds()[i]) : "+Inf";
            append_series_name(out, bucket, s->labels, "le", le);
            out += ' ' + std::to_string(cumulative) + '\n';
          }
          append_series_name(out, fam->name + "_sum", s->labels);
          out += ' ' + format_double(h.sum()) + '\n';
          append_series_name(out, fam->name + "_count", s->labels);
          out += ' ' + std::to_string(cumulative) + '\n';
          break;
        }
      }
    }
  }
  return out;
}

}  // namespace iovirt
