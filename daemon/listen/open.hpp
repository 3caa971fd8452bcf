// Turning a listener spec into open sockets: adopted from LISTEN_FDS (by listener name,
// else by address identity, as HAProxy matches) or freshly bound with the spec's
// options; Unix path mode/owner/group and stale-socket handling; closing what no
// listener claimed. Runs on the control thread at start-up only.
#pragma once

#include <string>
#include <vector>

#include "config/config.hpp"
#include "net/fd.hpp"
#include "os/systemd.hpp"
#include "util/result.hpp"

namespace echorelay::listen {

struct OpenListener {
  const config::Listener* spec = nullptr;
  std::vector<net::Fd> fds;  // one, or `sockets` for SO_REUSEPORT UDP
  net::Endpoint local;       // the real bound address (port 0 resolved)
  bool inherited = false;
  // We created the Unix socket file, so we remove it at exit — unless a successor
  // took the socket over.
  bool owns_path = false;
};

class InheritedSockets {
 public:
  explicit InheritedSockets(std::vector<os::InheritedFd> fds);
  ~InheritedSockets();  // closes whatever is left
  InheritedSockets(const InheritedSockets&) = delete;
  InheritedSockets& operator=(const InheritedSockets&) = delete;

  // All sockets named `spec.name` that still fit the spec (type, and address unless
  // the spec asks for port 0); if none, every socket whose type and local address equal
  // the spec's, whatever its name (a renamed listener keeps its socket).
  std::vector<net::Fd> take(const config::Listener& spec);
  // The one socket with this exact name (e.g. the admin endpoint's), if any.
  net::Fd take_named(const std::string& name);
  // Closes every socket nobody took and returns their names, for the log. A Unix path
  // socket whose name is in `owned_paths` (the predecessor created its file) has its
  // file removed too: no listener serves that path any more.
  std::vector<std::string> close_unclaimed(const std::vector<std::string>& owned_paths);

 private:
  struct Entry {
    net::Fd fd;
    std::string name;
  };
  std::vector<Entry> entries_;
};

Result<OpenListener> open_listener(const config::Listener& spec, InheritedSockets& inherited);

// Removes the socket file of a path listener we created. Safe to call twice.
void remove_socket_file(const OpenListener& listener);

}  // namespace echorelay::listen
