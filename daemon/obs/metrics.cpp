// Prometheus text exposition of the counters; see metrics.hpp.
#include "obs/metrics.hpp"

#include <fmt/format.h>

namespace echorelay::obs {

std::string_view to_string(Refuse r) {
  switch (r) {
    case Refuse::FrameTooLarge: return "frame_too_large";
    case Refuse::ReadTimeout: return "read_timeout";
    case Refuse::WriteTimeout: return "write_timeout";
    case Refuse::RequestTimeout: return "request_timeout";
    case Refuse::MaxConnections: return "max_connections";
    case Refuse::PeerNotAllowed: return "peer_not_allowed";
    case Refuse::RateLimited: return "rate_limited";
    case Refuse::DeniedPort: return "denied_port";
    case Refuse::SelfLoop: return "self_loop";
    case Refuse::Count: break;
  }
  return "unknown";
}

std::string_view to_string(Drop d) {
  switch (d) {
    case Drop::QueueFull: return "queue_full";
    case Drop::RateLimited: return "rate_limited";
    case Drop::DeniedPort: return "denied_port";
    case Drop::Truncated: return "truncated";
    case Drop::SendFailed: return "send_failed";
    case Drop::Count: break;
  }
  return "unknown";
}

std::string_view to_string(UpstreamError e) {
  switch (e) {
    case UpstreamError::Refused: return "refused";
    case UpstreamError::Reset: return "reset";
    case UpstreamError::Timeout: return "timeout";
    case UpstreamError::Unreachable: return "unreachable";
    case UpstreamError::Resolve: return "resolve";
    case UpstreamError::Other: return "other";
    case UpstreamError::Count: break;
  }
  return "unknown";
}

ListenerCounters& Registry::listener(const std::string& name) {
  std::lock_guard lock(mutex_);
  for (auto& l : listeners_) {
    if (l.name == name) return l;
  }
  return listeners_.emplace_back(name);
}

namespace {

std::uint64_t load(const Counter& c) { return c.load(std::memory_order_relaxed); }

// Label values are listener names, which config restricts to [A-Za-z0-9_.-]; nothing
// needs escaping.
void family(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

}  // namespace

std::string Registry::render_prometheus() const {
  std::lock_guard lock(mutex_);
  std::string out;
  auto per_listener = [&](std::string_view name, std::string_view type, std::string_view help, auto get) {
    family(out, name, type, help);
    for (const auto& l : listeners_) {
      fmt::format_to(std::back_inserter(out), "{}{{listener=\"{}\"}} {}\n", name, l.name, get(l));
    }
  };
  per_listener("echorelay_connections_accepted_total", "counter", "Connections accepted.",
               [](const ListenerCounters& l) { return load(l.connections_accepted); });
  per_listener("echorelay_connections_active", "gauge", "Connections open now.",
               [](const ListenerCounters& l) { return l.connections_active.load(std::memory_order_relaxed); });
  per_listener("echorelay_accept_errors_total", "counter",
               "accept() failures (EMFILE, ENFILE, ENOBUFS, ENOMEM, ...) the listener backed off from.",
               [](const ListenerCounters& l) { return load(l.accept_errors); });
  per_listener("echorelay_requests_total", "counter", "Echo frames answered.",
               [](const ListenerCounters& l) { return load(l.requests); });
  per_listener("echorelay_bytes_received_total", "counter", "Bytes read from clients.",
               [](const ListenerCounters& l) { return load(l.bytes_received); });
  per_listener("echorelay_bytes_sent_total", "counter", "Bytes written to clients.",
               [](const ListenerCounters& l) { return load(l.bytes_sent); });
  per_listener("echorelay_datagrams_received_total", "counter", "Datagrams read.",
               [](const ListenerCounters& l) { return load(l.datagrams_received); });
  per_listener("echorelay_datagrams_sent_total", "counter", "Datagrams sent.",
               [](const ListenerCounters& l) { return load(l.datagrams_sent); });

  family(out, "echorelay_datagrams_dropped_total", "counter", "Datagrams dropped, by reason.");
  for (const auto& l : listeners_) {
    for (unsigned i = 0; i < static_cast<unsigned>(Drop::Count); ++i) {
      fmt::format_to(std::back_inserter(out), "echorelay_datagrams_dropped_total{{listener=\"{}\",reason=\"{}\"}} {}\n",
                     l.name, to_string(static_cast<Drop>(i)), load(l.dropped[i]));
    }
  }
  family(out, "echorelay_refused_total", "counter", "Connections or requests refused, by reason.");
  for (const auto& l : listeners_) {
    for (unsigned i = 0; i < static_cast<unsigned>(Refuse::Count); ++i) {
      fmt::format_to(std::back_inserter(out), "echorelay_refused_total{{listener=\"{}\",reason=\"{}\"}} {}\n", l.name,
                     to_string(static_cast<Refuse>(i)), load(l.refused[i]));
    }
  }
  per_listener("echorelay_upstream_bytes_sent_total", "counter", "Bytes relayed to upstreams.",
               [](const ListenerCounters& l) { return load(l.upstream_bytes_sent); });
  per_listener("echorelay_upstream_bytes_received_total", "counter", "Bytes relayed from upstreams.",
               [](const ListenerCounters& l) { return load(l.upstream_bytes_received); });
  family(out, "echorelay_upstream_errors_total", "counter", "Upstream connect or transfer failures, by class.");
  for (const auto& l : listeners_) {
    for (unsigned i = 0; i < static_cast<unsigned>(UpstreamError::Count); ++i) {
      fmt::format_to(std::back_inserter(out), "echorelay_upstream_errors_total{{listener=\"{}\",reason=\"{}\"}} {}\n",
                     l.name, to_string(static_cast<UpstreamError>(i)), load(l.upstream_errors[i]));
    }
  }
  family(out, "echorelay_upstream_connect_seconds", "histogram", "Time to connect to an upstream.");
  for (const auto& l : listeners_) {
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i <= kConnectBuckets.size(); ++i) {
      cumulative += load(l.connect_buckets[i]);
      const std::string le = i < kConnectBuckets.size() ? fmt::format("{}", kConnectBuckets[i]) : "+Inf";
      fmt::format_to(std::back_inserter(out), "echorelay_upstream_connect_seconds_bucket{{listener=\"{}\",le=\"{}\"}} {}\n",
                     l.name, le, cumulative);
    }
    fmt::format_to(std::back_inserter(out), "echorelay_upstream_connect_seconds_sum{{listener=\"{}\"}} {}\n", l.name,
                   static_cast<double>(load(l.connect_micros)) / 1e6);
    fmt::format_to(std::back_inserter(out), "echorelay_upstream_connect_seconds_count{{listener=\"{}\"}} {}\n", l.name,
                   load(l.connect_count));
  }
  per_listener("echorelay_udp_sessions_active", "gauge", "UDP relay sessions open now.",
               [](const ListenerCounters& l) { return l.udp_sessions_active.load(std::memory_order_relaxed); });
  per_listener("echorelay_udp_sessions_evicted_total", "counter",
               "UDP relay sessions closed to stay within max_sessions.",
               [](const ListenerCounters& l) { return load(l.udp_sessions_evicted); });
  per_listener("echorelay_udp_sessions_expired_total", "counter",
               "UDP relay sessions closed after session_timeout idle.",
               [](const ListenerCounters& l) { return load(l.udp_sessions_expired); });
  family(out, "echorelay_restarts_total", "counter", "Hot restarts handed over to a successor.");
  fmt::format_to(std::back_inserter(out), "echorelay_restarts_total {}\n", load(restarts));
  family(out, "echorelay_restart_failures_total", "counter", "Hot restarts that failed; the old process kept serving.");
  fmt::format_to(std::back_inserter(out), "echorelay_restart_failures_total {}\n", load(restart_failures));
  return out;
}

}  // namespace echorelay::obs
