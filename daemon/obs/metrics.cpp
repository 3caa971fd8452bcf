// Prometheus text exposition of the counters; see metrics.hpp.
#include "obs/metrics.hpp"

#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <new>
#include <vector>

#include "os/resources.hpp"

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
    case Refuse::IdleTimeout: return "idle_timeout";
    case Refuse::SourceNotAllowed: return "source_not_allowed";
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
    case Drop::SourceNotAllowed: return "source_not_allowed";
    case Drop::UpstreamBusy: return "upstream_busy";
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

// The ledger's layout. Plain lock-free atomics in MAP_SHARED memory work across
// processes. A binary with another layout (counters added) starts a ledger of its own.
namespace {

constexpr std::uint64_t kLedgerMagic = 0x6563686f'6c656467ULL;  // "echoledg"
constexpr std::uint32_t kLedgerLayout = 2;
constexpr std::uint32_t kLedgerSlots = 256;
constexpr std::size_t kSlotName = 120;

struct LedgerSlot {
  std::atomic<std::uint32_t> state;  // 0 = free, 1 = being named, 2 = named
  std::uint32_t reserved;
  char name[kSlotName];
  Counter values[ListenerCounters::kCounterCount];
};

}  // namespace

struct LedgerHeader {
  std::uint64_t magic;
  std::uint32_t layout;
  std::uint32_t counters;
  std::uint32_t slot_count;
  std::atomic<std::uint32_t> slots_used;
  Counter restarts;
  Counter restart_failures;
  LedgerSlot slots[kLedgerSlots];
};

namespace {

// A mirror upstream's slot: listener names cannot hold a tab, so no listener's collides.
std::string ledger_key(const ListenerCounters& l) { return l.upstream.empty() ? l.name : l.name + "\t" + l.upstream; }

}  // namespace

struct Registry::Ledger {
  os::SharedMemory memory;                  // empty when memfd_create failed
  std::unique_ptr<LedgerHeader> fallback;   // then the totals live here, unshared
  LedgerHeader* header = nullptr;

  LedgerSlot* find(std::string_view name, bool create) {
    const auto used = std::min(header->slots_used.load(std::memory_order_acquire), header->slot_count);
    for (std::uint32_t i = 0; i < used; ++i) {
      LedgerSlot& slot = header->slots[i];
      if (slot.state.load(std::memory_order_acquire) == 2 && name == slot.name) return &slot;
    }
    if (!create || name.size() >= kSlotName) return nullptr;
    const auto index = header->slots_used.fetch_add(1, std::memory_order_acq_rel);
    if (index >= header->slot_count) return nullptr;
    LedgerSlot& slot = header->slots[index];
    slot.state.store(1, std::memory_order_relaxed);
    std::memcpy(slot.name, name.data(), name.size());
    slot.name[name.size()] = '\0';
    slot.state.store(2, std::memory_order_release);
    return &slot;
  }

  // Two processes may name a slot for one listener at the same moment: totals are the
  // sum over every slot of that name.
  void add_totals(std::string_view name, std::array<std::uint64_t, ListenerCounters::kCounterCount>& out) const {
    const auto used = std::min(header->slots_used.load(std::memory_order_acquire), header->slot_count);
    for (std::uint32_t i = 0; i < used; ++i) {
      const LedgerSlot& slot = header->slots[i];
      if (slot.state.load(std::memory_order_acquire) != 2 || name != slot.name) continue;
      for (std::size_t c = 0; c < out.size(); ++c) out[c] += slot.values[c].load(std::memory_order_relaxed);
    }
  }
};

namespace {

void make_header_in(void* where) {
  // Zero bytes are what a value-initialised header holds; the placement new only
  // starts the objects' lifetimes and writes the identity.
  auto* header = new (where) LedgerHeader{};
  header->magic = kLedgerMagic;
  header->layout = kLedgerLayout;
  header->counters = ListenerCounters::kCounterCount;
  header->slot_count = kLedgerSlots;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

Registry::Registry() : ledger_(std::make_unique<Ledger>()), start_time_seconds_(now_seconds()) {
  auto memory = os::SharedMemory::create("echorelay-counters", sizeof(LedgerHeader));
  if (memory) {
    ledger_->memory = std::move(*memory);
    make_header_in(ledger_->memory.data());
    ledger_->header = static_cast<LedgerHeader*>(ledger_->memory.data());
  } else {
    ledger_->fallback = std::make_unique<LedgerHeader>();
    ledger_->header = ledger_->fallback.get();
    ledger_->header->slot_count = kLedgerSlots;
  }
}

Registry::~Registry() = default;

Counter& Registry::restarts() const { return ledger_->header->restarts; }
Counter& Registry::restart_failures() const { return ledger_->header->restart_failures; }
int Registry::ledger_fd() const { return ledger_->memory.data() ? ledger_->memory.fd() : -1; }

bool Registry::adopt_ledger(int fd, std::string& error) {
  auto memory = os::SharedMemory::adopt(fd);
  if (!memory) {
    error = memory.error();
    return false;
  }
  const auto* header = static_cast<const LedgerHeader*>(memory->data());
  if (memory->size() != sizeof(LedgerHeader) || header->magic != kLedgerMagic || header->layout != kLedgerLayout ||
      header->counters != ListenerCounters::kCounterCount || header->slot_count != kLedgerSlots) {
    error = "the predecessor's counters have another layout (a different version)";
    return false;
  }
  std::lock_guard lock(mutex_);
  ledger_->memory = std::move(*memory);
  ledger_->fallback.reset();
  ledger_->header = static_cast<LedgerHeader*>(ledger_->memory.data());
  return true;
}

void Registry::fold_into_ledger() {
  std::lock_guard lock(mutex_);
  for (auto& l : listeners_) {
    LedgerSlot* slot = ledger_->find(ledger_key(l), true);
    if (!slot) continue;  // the ledger is full: this process's counts stay its own
    std::size_t i = 0;
    l.for_each_counter([&](Counter& c) {
      const auto value = c.load(std::memory_order_relaxed);
      slot->values[i].fetch_add(value - l.folded[i], std::memory_order_relaxed);
      l.folded[i] = value;
      ++i;
    });
  }
}

ListenerCounters& Registry::listener(const std::string& name) { return upstream(name, {}); }

ListenerCounters& Registry::upstream(const std::string& listener, const std::string& upstream) {
  std::lock_guard lock(mutex_);
  for (auto& l : listeners_) {
    if (l.name == listener && l.upstream == upstream) return l;
  }
  return listeners_.emplace_back(listener, upstream);
}

namespace {

std::uint64_t load(const Counter& c) { return c.load(std::memory_order_relaxed); }

// Label values are listener names, which config restricts to [A-Za-z0-9_.-], and
// upstreams as parsed (IP literals, host names, ports, brackets); nothing
// needs escaping.
void family(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

}  // namespace

std::string Registry::render_prometheus() const {
  std::lock_guard lock(mutex_);
  // What each listener exports: the ledger's totals plus what this process counted
  // and has not folded yet; gauges as they are.
  std::deque<ListenerCounters> exported;
  for (auto& own : listeners_) {
    std::array<std::uint64_t, ListenerCounters::kCounterCount> totals{};
    ledger_->add_totals(ledger_key(own), totals);
    auto& live = const_cast<ListenerCounters&>(own);  // read-only: for_each_counter is not const
    std::size_t i = 0;
    live.for_each_counter([&](Counter& c) {
      totals[i] += c.load(std::memory_order_relaxed) - own.folded[i];
      ++i;
    });
    auto& out = exported.emplace_back(own.name, own.upstream);
    i = 0;
    out.for_each_counter([&](Counter& c) { c.store(totals[i++], std::memory_order_relaxed); });
    out.connections_active.store(own.connections_active.load(std::memory_order_relaxed));
    out.udp_sessions_active.store(own.udp_sessions_active.load(std::memory_order_relaxed));
  }
  std::string out;
  auto per_listener = [&](std::string_view name, std::string_view type, std::string_view help, auto get) {
    family(out, name, type, help);
    for (const auto& l : exported) {
      if (!l.upstream.empty()) continue;
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
  for (const auto& l : exported) {
    if (!l.upstream.empty()) {
      const auto busy = static_cast<unsigned>(Drop::UpstreamBusy);
      fmt::format_to(std::back_inserter(out),
                     "echorelay_datagrams_dropped_total{{listener=\"{}\",reason=\"{}\",upstream=\"{}\"}} {}\n", l.name,
                     to_string(Drop::UpstreamBusy), l.upstream, load(l.dropped[busy]));
      continue;
    }
    for (unsigned i = 0; i < static_cast<unsigned>(Drop::Count); ++i) {
      if (static_cast<Drop>(i) == Drop::UpstreamBusy) continue;  // per upstream, above
      fmt::format_to(std::back_inserter(out), "echorelay_datagrams_dropped_total{{listener=\"{}\",reason=\"{}\"}} {}\n",
                     l.name, to_string(static_cast<Drop>(i)), load(l.dropped[i]));
    }
  }
  family(out, "echorelay_refused_total", "counter", "Connections or requests refused, by reason.");
  for (const auto& l : exported) {
    if (!l.upstream.empty()) continue;
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
  for (const auto& l : exported) {
    if (!l.upstream.empty()) continue;
    for (unsigned i = 0; i < static_cast<unsigned>(UpstreamError::Count); ++i) {
      fmt::format_to(std::back_inserter(out), "echorelay_upstream_errors_total{{listener=\"{}\",reason=\"{}\"}} {}\n",
                     l.name, to_string(static_cast<UpstreamError>(i)), load(l.upstream_errors[i]));
    }
  }
  family(out, "echorelay_upstream_connect_seconds", "histogram", "Time to connect to an upstream.");
  for (const auto& l : exported) {
    if (!l.upstream.empty()) continue;
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
  auto per_upstream = [&](std::string_view name, std::string_view help, auto get) {
    family(out, name, "counter", help);
    for (const auto& l : exported) {
      if (l.upstream.empty()) continue;
      fmt::format_to(std::back_inserter(out), "{}{{listener=\"{}\",upstream=\"{}\"}} {}\n", name, l.name, l.upstream,
                     get(l));
    }
  };
  per_upstream("echorelay_mirror_datagrams_sent_total", "Datagrams a mirror sent to this upstream.",
               [](const ListenerCounters& l) { return load(l.datagrams_sent); });
  per_upstream("echorelay_mirror_bytes_sent_total", "Bytes a mirror sent to this upstream.",
               [](const ListenerCounters& l) { return load(l.bytes_sent); });
  per_upstream("echorelay_mirror_sampled_out_total", "Datagrams not sent to this upstream because of its sample.",
               [](const ListenerCounters& l) { return load(l.sampled_out); });
  per_upstream("echorelay_mirror_errors_total",
               "Errors on this upstream's socket (ICMP unreachable, unresolved name); the datagram is lost.",
               [](const ListenerCounters& l) { return load(l.mirror_errors); });
  family(out, "echorelay_restarts_total", "counter", "Hot restarts handed over to a successor.");
  fmt::format_to(std::back_inserter(out), "echorelay_restarts_total {}\n", load(ledger_->header->restarts));
  family(out, "echorelay_restart_failures_total", "counter", "Hot restarts that failed; the old process kept serving.");
  fmt::format_to(std::back_inserter(out), "echorelay_restart_failures_total {}\n",
                 load(ledger_->header->restart_failures));
  family(out, "process_start_time_seconds", "gauge", "Start time of this process since the Unix epoch, in seconds.");
  fmt::format_to(std::back_inserter(out), "process_start_time_seconds {:.3f}\n", start_time_seconds_);
  return out;
}

}  // namespace echorelay::obs
