// The pure decision of which inherited sockets a listener adopts (by name, else by
// address identity), factored out of InheritedSockets::take so it can be fuzzed
// without real sockets. See open.hpp for the rules.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "net/endpoint.hpp"

namespace echorelay::listen {

// What take() knows about one inherited socket, read back from the kernel.
struct InheritedFacts {
  std::string name;                    // its LISTEN_FDNAMES entry
  bool available = false;              // still held (not taken by an earlier listener)
  std::optional<int> type;             // SOCK_STREAM / SOCK_DGRAM; unset when unidentifiable
  std::optional<net::Endpoint> local;  // getsockname, canonical
};

// Indices (ascending) of the available sockets `spec` adopts: every one named
// `spec.name` that fits the spec (type, and address unless the spec asks for port 0);
// if none, every one whose type and local address equal the spec's. Never an
// unavailable one, never the same index twice.
std::vector<std::size_t> match_inherited(const config::Listener& spec, const std::vector<InheritedFacts>& sockets);

}  // namespace echorelay::listen
