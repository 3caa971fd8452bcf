// Binding and adopting listening sockets. Order matters in a few places, noted inline.
#include "listen/open.hpp"

#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <spdlog/spdlog.h>

#include "listen/match.hpp"
#include "net/socket_options.hpp"
#include "net/multicast.hpp"

namespace echorelay::listen {

namespace {

using config::Protocol;

int socket_type(const config::Listener& spec) { return spec.is_stream() ? SOCK_STREAM : SOCK_DGRAM; }

std::string op_error(const char* op, const config::Listener& spec, const std::string& what) {
  return std::string(op) + " " + std::string(to_string(spec.protocol)) + " " + spec.endpoint.to_string() + ": " +
         what;
}

Result<uid_t> resolve_user(const std::string& owner) {
  unsigned long id = 0;
  auto [p, ec] = std::from_chars(owner.data(), owner.data() + owner.size(), id);
  if (ec == std::errc() && p == owner.data() + owner.size()) return static_cast<uid_t>(id);
  passwd pw{};
  passwd* found = nullptr;
  std::vector<char> buf(16384);
  if (::getpwnam_r(owner.c_str(), &pw, buf.data(), buf.size(), &found) != 0 || !found) {
    return make_error("unknown user \"" + owner + "\"");
  }
  return found->pw_uid;
}

Result<gid_t> resolve_group(const std::string& group) {
  unsigned long id = 0;
  auto [p, ec] = std::from_chars(group.data(), group.data() + group.size(), id);
  if (ec == std::errc() && p == group.data() + group.size()) return static_cast<gid_t>(id);
  ::group gr{};
  ::group* found = nullptr;
  std::vector<char> buf(16384);
  if (::getgrnam_r(group.c_str(), &gr, buf.data(), buf.size(), &found) != 0 || !found) {
    return make_error("unknown group \"" + group + "\"");
  }
  return found->gr_gid;
}

// A socket file left by a crashed process blocks bind with EADDRINUSE. It is removed
// only when a connect() proves nobody listens on it: replacing a live socket would
// silently steal a running daemon's address.
Result<void> clear_stale_socket(const config::Listener& spec) {
  const std::string& path = spec.endpoint.path;
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return {};
    return make_error(op_error("listen", spec, "stat: " + net::errno_text(errno)));
  }
  if (!S_ISSOCK(st.st_mode)) return make_error(op_error("listen", spec, "path exists and is not a socket"));
  net::Fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  auto addr = net::to_sockaddr(spec.endpoint);
  if (!probe || !addr) return make_error(op_error("listen", spec, "cannot probe existing socket"));
  if (::connect(probe.get(), addr->get(), addr->len) == 0) {
    return make_error(op_error("listen", spec, "address in use by a running process"));
  }
  if (errno != ECONNREFUSED) {
    return make_error(op_error("listen", spec, "existing socket: " + net::errno_text(errno)));
  }
  spdlog::info("removing stale socket file {}", path);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return make_error(op_error("listen", spec, "unlink stale socket: " + net::errno_text(errno)));
  }
  return {};
}

Result<void> apply_unix_permissions(const config::Listener& spec) {
  const std::string& path = spec.endpoint.path;
  if (spec.mode && ::chmod(path.c_str(), *spec.mode) != 0) {
    return make_error(op_error("chmod", spec, net::errno_text(errno)));
  }
  if (spec.owner.empty() && spec.group.empty()) return {};
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  if (!spec.owner.empty()) {
    auto u = resolve_user(spec.owner);
    if (!u) return make_error(op_error("chown", spec, u.error()));
    uid = *u;
  }
  if (!spec.group.empty()) {
    auto g = resolve_group(spec.group);
    if (!g) return make_error(op_error("chown", spec, g.error()));
    gid = *g;
  }
  if (::chown(path.c_str(), uid, gid) != 0) return make_error(op_error("chown", spec, net::errno_text(errno)));
  return {};
}

Result<void> apply_inet_options(int fd, const config::Listener& spec, bool is_ipv6) {
  std::vector<Result<void>> results;
  if (spec.is_stream()) {
    // Without SO_REUSEADDR a restart fails with EADDRINUSE while old connections sit in TIME_WAIT.
    results.push_back(net::set_int_option(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR"));
  } else if (spec.protocol == Protocol::Multicast) {
    // Several receivers of one group on one host is the normal multicast set-up.
    results.push_back(net::set_int_option(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR"));
  }
  if (spec.reuse_port || (spec.is_datagram() && spec.sockets > 1)) {
    results.push_back(net::set_int_option(fd, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT"));
  }
  if (is_ipv6 && spec.v6only) {
    results.push_back(net::set_int_option(fd, IPPROTO_IPV6, IPV6_V6ONLY, *spec.v6only ? 1 : 0, "IPV6_V6ONLY"));
  }
  if (spec.recv_buffer) {
    results.push_back(net::set_int_option(fd, SOL_SOCKET, SO_RCVBUF, static_cast<int>(spec.recv_buffer), "SO_RCVBUF"));
  }
  if (spec.send_buffer) {
    results.push_back(net::set_int_option(fd, SOL_SOCKET, SO_SNDBUF, static_cast<int>(spec.send_buffer), "SO_SNDBUF"));
  }
  if (spec.protocol == Protocol::Tcp) {
    // Accepted sockets inherit these from the listener on Linux, so they cost nothing
    // per connection.
    results.push_back(net::set_keepalive(fd, std::chrono::duration_cast<std::chrono::seconds>(spec.keepalive)));
    results.push_back(net::set_int_option(fd, IPPROTO_TCP, TCP_NODELAY, spec.nodelay ? 1 : 0, "TCP_NODELAY"));
    results.push_back(net::set_linger(fd, spec.linger));
  }
  for (auto& r : results) {
    if (!r) return r;
  }
  return {};
}

Result<net::Fd> bind_one(const config::Listener& spec, const net::Endpoint& endpoint) {
  auto addr = net::to_sockaddr(endpoint);
  if (!addr) return make_error(op_error("listen", spec, addr.error()));
  const int family = addr->family();
  net::Fd fd(::socket(family, socket_type(spec) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return make_error(op_error("socket", spec, net::errno_text(errno)));

  if (family != AF_UNIX) {
    if (auto r = apply_inet_options(fd.get(), spec, family == AF_INET6); !r) return make_error(op_error("listen", spec, r.error()));
  } else if (spec.endpoint.kind == net::Endpoint::Kind::UnixPath) {
    if (auto r = clear_stale_socket(spec); !r) return make_error(r.error());
  }
  if (::bind(fd.get(), addr->get(), addr->len) != 0) return make_error(op_error("bind", spec, net::errno_text(errno)));
  if (spec.endpoint.kind == net::Endpoint::Kind::UnixPath) {
    // Permissions before listen(): no client can connect through a too-open window.
    if (auto r = apply_unix_permissions(spec); !r) {
      ::unlink(spec.endpoint.path.c_str());
      return make_error(r.error());
    }
  }
  if (spec.is_stream() && ::listen(fd.get(), spec.backlog) != 0) {
    if (spec.endpoint.kind == net::Endpoint::Kind::UnixPath) ::unlink(spec.endpoint.path.c_str());
    return make_error(op_error("listen", spec, net::errno_text(errno)));
  }
  if (spec.protocol == Protocol::Multicast) {
    if (auto r = net::join_multicast(fd.get(), spec); !r) return make_error(r.error());
  }
  return fd;
}

Result<OpenListener> bind_listener(const config::Listener& spec) {
  OpenListener open;
  open.spec = &spec;
  const unsigned count = spec.is_datagram() && spec.protocol != Protocol::Multicast ? std::max(1u, spec.sockets) : 1u;
  net::Endpoint endpoint = spec.endpoint;
  for (unsigned i = 0; i < count; ++i) {
    auto fd = bind_one(spec, endpoint);
    if (!fd) return make_error(fd.error());
    if (i == 0) {
      auto id = net::identify_socket(fd->get());
      if (!id) return make_error(op_error("listen", spec, id.error()));
      open.local = id->local;
      // With port 0 the rest of an SO_REUSEPORT group must join the port the first got.
      if (endpoint.kind == net::Endpoint::Kind::Inet) endpoint.port = open.local.port;
    }
    open.fds.push_back(std::move(*fd));
  }
  open.owns_path = spec.endpoint.kind == net::Endpoint::Kind::UnixPath;
  return open;
}

Result<OpenListener> adopt_listener(const config::Listener& spec, std::vector<net::Fd> fds) {
  OpenListener open;
  open.spec = &spec;
  open.inherited = true;
  for (auto& fd : fds) {
    auto id = net::identify_socket(fd.get());
    if (!id) return make_error(op_error("adopt", spec, id.error()));
    if (id->type != socket_type(spec)) {
      return make_error(op_error("adopt", spec, "inherited socket has the wrong type"));
    }
    if (spec.is_stream() && !id->listening && ::listen(fd.get(), spec.backlog) != 0) {
      return make_error(op_error("listen", spec, net::errno_text(errno)));
    }
    // O_NONBLOCK lives on the shared open file description; every user of it here is
    // non-blocking, so setting it again is harmless.
    ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK);
    ::fcntl(fd.get(), F_SETFD, FD_CLOEXEC);
    open.local = id->local;
    open.fds.push_back(std::move(fd));
  }
  return open;
}

}  // namespace

InheritedSockets::InheritedSockets(std::vector<os::InheritedFd> fds) {
  for (auto& f : fds) entries_.push_back({net::Fd(f.fd), std::move(f.name)});
}

InheritedSockets::~InheritedSockets() = default;

std::vector<net::Fd> InheritedSockets::take(const config::Listener& spec) {
  std::vector<InheritedFacts> facts(entries_.size());
  for (std::size_t i = 0; i < entries_.size(); ++i) {
    facts[i].name = entries_[i].name;
    facts[i].available = static_cast<bool>(entries_[i].fd);
    if (!entries_[i].fd) continue;
    if (auto id = net::identify_socket(entries_[i].fd.get())) {
      facts[i].type = id->type;
      facts[i].local = id->local;
    }
  }
  std::vector<net::Fd> taken;
  for (std::size_t i : match_inherited(spec, facts)) taken.push_back(std::move(entries_[i].fd));
  return taken;
}

net::Fd InheritedSockets::take_named(const std::string& name) {
  for (auto& e : entries_) {
    if (e.fd && e.name == name) return std::move(e.fd);
  }
  return {};
}

std::vector<std::string> InheritedSockets::close_unclaimed(const std::vector<std::string>& owned_paths) {
  std::vector<std::string> names;
  for (auto& e : entries_) {
    if (!e.fd) continue;
    if (std::find(owned_paths.begin(), owned_paths.end(), e.name) != owned_paths.end()) {
      auto id = net::identify_socket(e.fd.get());
      if (id && id->local.kind == net::Endpoint::Kind::UnixPath) ::unlink(id->local.path.c_str());
    }
    names.push_back(e.name);
    e.fd.reset();
  }
  return names;
}

Result<OpenListener> open_listener(const config::Listener& spec, InheritedSockets& inherited) {
  auto fds = inherited.take(spec);
  if (!fds.empty()) return adopt_listener(spec, std::move(fds));
  return bind_listener(spec);
}

void remove_socket_file(const OpenListener& listener) {
  if (listener.owns_path && listener.spec) ::unlink(listener.spec->endpoint.path.c_str());
}

}  // namespace echorelay::listen
