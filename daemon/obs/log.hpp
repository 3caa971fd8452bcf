// Logging set-up: one spdlog logger ("echorelay") as the default, text or JSON to
// stderr, or the journal. Call sites use spdlog::info/debug/... directly.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "config/config.hpp"

namespace echorelay::obs {

// Replaces the default logger. `auto` picks journal when JOURNAL_STREAM names our
// stderr, else text.
void setup_logging(config::LogLevel level, config::LogFormat format);

// What every session kind (echo connection, TCP relay, UDP relay session) reports
// when it ends, in one line format at debug level:
//   [cID LISTENER] closed: KIND, peer P, upstream U, N bytes in, N bytes out,
//   N requests, Nms, REASON
// "in" is what the client sent, "out" what it was sent; upstream and requests are
// "-" where the kind has none. The journal's LISTENER=, PEER= and REASON= come from it.
struct SessionEnd {
  std::uint64_t id = 0;
  std::string_view listener;
  std::string_view kind;  // "echo", "relay", "udp relay"
  std::string_view peer = "-";
  std::string_view upstream = "-";
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
  std::int64_t requests = -1;  // -1: not counted for this kind
  std::chrono::milliseconds duration{0};
  std::string_view reason;
};
void log_session_end(const SessionEnd& end);

}  // namespace echorelay::obs
