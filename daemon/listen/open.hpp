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

  // All sockets named `spec.name`; if none, every unnamed/unknown-named socket whose
  // family, type and local address equal the spec's.
  std::vector<net::Fd> take(const config::Listener& spec);
  // Closes every socket nobody took and returns their names, for the log.
  std::vector<std::string> close_unclaimed();

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
