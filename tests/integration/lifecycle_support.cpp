// Implementation of lifecycle_support.hpp: the config with one listener of each kind,
// the classifying load clients and the file swaps of the upgrade tests.
#include "lifecycle_support.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>

namespace echorelay::test {

namespace {

int remaining(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}

}  // namespace

std::string tcp_unix_udp_config(const std::string& unix_path) {
  return config_toml("workers = 2\ndrain_timeout = \"5s\"\nrestart_timeout = \"5s\"",
                     {{"tcp", "tcp"}, {"unix", "unix", unix_path}, {"udp", "udp"}});
}

ServiceOptions from_copied_binary(const TempDir& bin_dir) {
  ServiceOptions options;
  options.binary = bin_dir.file("echorelayd");
  EXPECT_TRUE(replace_file(ECHORELAYD_PATH, options.binary));
  return options;
}

// ---- load generators ----

const char* to_string(Outcome o) {
  switch (o) {
    case Outcome::Ok: return "ok";
    case Outcome::CleanClose: return "clean close";
    case Outcome::ClosedUnsent: return "closed before the request was sent";
    case Outcome::NotSent: return "not sent (the peer had shut its read side)";
    case Outcome::Reset: return "reset";
    case Outcome::Partial: return "partial answer";
    case Outcome::Wrong: return "wrong answer";
    case Outcome::Timeout: return "timeout";
    case Outcome::Error: return "error";
  }
  return "?";
}

Outcome round_trip(int fd, std::string_view request, Millis timeout, int* err) {
  auto deadline = Clock::now() + timeout;
  int dummy = 0;
  if (err == nullptr) err = &dummy;
  *err = 0;
  std::size_t sent = 0;
  std::string got;
  char buf[65536];
  while (got.size() < request.size()) {
    pollfd p{fd, POLLIN, 0};
    if (sent < request.size()) p.events |= POLLOUT;
    int rc = ::poll(&p, 1, remaining(deadline));
    if (rc == 0) return Outcome::Timeout;
    if (rc < 0) {
      if (errno == EINTR) continue;
      *err = errno;
      return Outcome::Error;
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = ::recv(fd, buf, std::min(sizeof buf, request.size() - got.size()), MSG_DONTWAIT);
      // The FIN can land between the caller's last look and this poll: nothing was sent
      // then, so nothing crossed it.
      if (n == 0 && sent == 0) return Outcome::ClosedUnsent;
      if (n == 0) return got.empty() ? Outcome::CleanClose : Outcome::Partial;
      if (n < 0 && errno != EAGAIN && errno != EINTR) {
        *err = errno;
        return errno == ECONNRESET || errno == EPIPE ? Outcome::Reset : Outcome::Error;
      }
      if (n > 0) {
        got.append(buf, static_cast<std::size_t>(n));
        if (got.compare(0, got.size(), request.substr(0, got.size())) != 0) return Outcome::Wrong;
      }
    }
    if ((p.revents & POLLOUT) && sent < request.size()) {
      ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n < 0 && errno != EAGAIN && errno != EINTR) {
        *err = errno;
        if (errno == EPIPE && sent == 0 && got.empty()) return Outcome::NotSent;
        return errno == ECONNRESET || errno == EPIPE ? Outcome::Reset : Outcome::Error;
      }
      if (n > 0) sent += static_cast<std::size_t>(n);
    }
  }
  return Outcome::Ok;
}

std::uint64_t LoadCounters::failures() const {
  return failed_connects + resets + partial + wrong + timeouts + errors + udp_wrong + eof_after_send;
}

std::string payload(std::uint64_t seed, std::size_t n) {
  std::string s(n, 'a');
  std::uint64_t x = seed * 6364136223846793005ull + 1442695040888963407ull;
  for (auto& c : s) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    c = static_cast<char>('!' + (x >> 33) % 90);
  }
  return s;
}

Load::Load() : started_(Clock::now()) {}

Load::~Load() { stop(); }

void Load::note(std::string text) {
  auto ms = std::chrono::duration_cast<Millis>(Clock::now() - started_).count();
  std::lock_guard lock(mu_);
  if (notes_.size() < 30) notes_.push_back("+" + std::to_string(ms) + "ms " + text);
}

void Load::churn(const std::string& address, int clients, Millis pause) {
  for (int i = 0; i < clients; ++i)
    threads_.emplace_back([this, address, id = static_cast<int>(threads_.size()), pause] {
      run_churn(address, id, pause);
    });
}

void Load::persistent(const std::string& address, int clients, Millis pause) {
  for (int i = 0; i < clients; ++i)
    threads_.emplace_back([this, address, id = static_cast<int>(threads_.size()), pause] {
      run_persistent(address, id, pause);
    });
}

void Load::udp(const std::string& address, Millis pause, Millis wait) {
  threads_.emplace_back([this, address, pause, wait] { run_udp(address, pause, wait); });
}

void Load::stop() {
  stop_ = true;
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  threads_.clear();
}

namespace {

// Counts an outcome; returns true when the request must be retried on a new connection.
// EOF already queued on an idle connection (no request outstanding).
bool closed_by_peer(int fd) {
  char byte;
  const ssize_t n = ::recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0;
}

bool account(LoadCounters& c, Outcome o) {
  switch (o) {
    case Outcome::Ok: ++c.requests_ok; return false;
    case Outcome::CleanClose: ++c.eof_after_send; return true;
    case Outcome::NotSent:
    case Outcome::ClosedUnsent:  // on a fresh connection: the server dropped it unserved
    case Outcome::Reset: ++c.resets; return true;
    case Outcome::Partial: ++c.partial; return true;
    case Outcome::Wrong: ++c.wrong; return true;
    case Outcome::Timeout: ++c.timeouts; return true;
    case Outcome::Error: ++c.errors; return true;
  }
  return true;
}

}  // namespace

void Load::run_churn(std::string address, int id, Millis pause) {
  std::uint64_t seq = 0;
  while (!stop_) {
    int err = 0;
    Fd fd = try_connect(address, &err, 3000ms);
    if (!fd) {
      ++counters_.failed_connects;
      note("churn " + std::to_string(id) + " connect " + address + ": " + std::strerror(err));
      std::this_thread::sleep_for(pause);
      continue;
    }
    ++counters_.connects;
    std::string request = "churn " + std::to_string(id) + " " + std::to_string(seq) + " " +
                          payload(seq * 131 + static_cast<std::uint64_t>(id), 10 + seq % 200) + "\n";
    Outcome o = round_trip(fd.get(), request, 3000ms, &err);
    bool retry = account(counters_, o);
    if (o != Outcome::Ok)
      note("churn " + std::to_string(id) + " seq " + std::to_string(seq) + ": " + to_string(o) +
           (err ? std::string(" (") + std::strerror(err) + ")" : ""));
    if (!retry) ++seq;
    fd.reset();
    std::this_thread::sleep_for(pause);
  }
}

void Load::run_persistent(std::string address, int id, Millis pause) {
  const bool is_unix = address.starts_with("/") || address.starts_with("@");  // a path or an abstract name
  std::uint64_t seq = 0;
  Fd fd;
  bool answered_here = false;  // fd has had an answer: a reused connection
  while (!stop_) {
    int err = 0;
    if (!fd) {
      fd = try_connect(address, &err, 3000ms);
      if (!fd) {
        ++counters_.failed_connects;
        note("persistent " + std::to_string(id) + " connect " + address + ": " + std::strerror(err));
        std::this_thread::sleep_for(pause);
        continue;
      }
      ++counters_.connects;
    }
    // A server closing at a request boundary has sent its FIN right behind the last
    // answer: seen here, before anything is sent, it is a reconnect, not a failure.
    if (closed_by_peer(fd.get())) {
      ++counters_.clean_closes;
      fd.reset();
      answered_here = false;
      continue;
    }
    std::string request = "ping " + std::to_string(id) + " " + std::to_string(seq) + " " +
                          payload(seq * 7919 + static_cast<std::uint64_t>(id), 1 + seq % 300) + "\n";
    Outcome o = round_trip(fd.get(), request, 3000ms, &err);
    // A Unix server closing at a request boundary shuts its read side first, so a request
    // that would cross its FIN is refused at send (EPIPE, nothing taken): as clean as a
    // FIN seen before sending.
    // A FIN that arrived after the look above, before the send, is the same clean close.
    const bool refused_unsent = o == Outcome::ClosedUnsent || (o == Outcome::NotSent && is_unix);
    if (refused_unsent && answered_here) {
      ++counters_.clean_closes;
      fd.reset();
      answered_here = false;
      continue;
    }
    const bool crossed = o == Outcome::CleanClose && answered_here && is_unix;
    bool retry = crossed || account(counters_, o);
    if (crossed) ++counters_.unix_close_crossed;
    if (o != Outcome::Ok)
      note("persistent " + std::to_string(id) + " seq " + std::to_string(seq) + ": " + to_string(o) +
           (crossed ? " (Unix: the request crossed the server's FIN)" : "") +
           (err ? std::string(" (") + std::strerror(err) + ")" : ""));
    if (retry) {
      fd.reset();  // reconnect and send the same request again
      answered_here = false;
    } else {
      ++seq;
      answered_here = true;
    }
    std::this_thread::sleep_for(pause);
  }
}

void Load::run_udp(std::string address, Millis pause, Millis wait) {
  socklen_t len = 0;
  sockaddr_storage peer = parse_inet(address, &len);
  Fd fd(::socket(peer.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  std::string local = peer.ss_family == AF_INET6 ? "[::1]:0" : "127.0.0.1:0";
  socklen_t llen = 0;
  sockaddr_storage ls = parse_inet(local, &llen);
  if (!fd || ::bind(fd.get(), reinterpret_cast<sockaddr*>(&ls), llen) != 0 ||
      ::connect(fd.get(), reinterpret_cast<sockaddr*>(&peer), len) != 0) {
    ++counters_.errors;
    note("udp socket: " + std::string(std::strerror(errno)));
    return;
  }
  std::uint64_t seq = 0;
  while (!stop_) {
    std::string datagram = "udp " + std::to_string(seq) + " " + payload(seq, 16 + seq % 400);
    ++counters_.udp_sent;
    if (::send(fd.get(), datagram.data(), datagram.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(datagram.size())) {
      ++counters_.udp_lost;
      note("udp send " + std::to_string(seq) + ": " + std::strerror(errno));
    } else {
      bool answered = false;
      auto deadline = Clock::now() + wait;
      while (!answered) {
        auto reply = udp_recv(fd.get(), Millis(remaining(deadline)));
        if (!reply) break;
        if (*reply == datagram) {
          answered = true;
        } else if (reply->rfind("udp ", 0) == 0 && reply->size() > 4) {
          // A late answer to an earlier datagram (already counted lost): not this one.
          std::uint64_t other = std::strtoull(reply->c_str() + 4, nullptr, 10);
          if (other >= seq) {
            ++counters_.udp_wrong;
            note("udp: unexpected answer for seq " + std::to_string(other));
          }
        } else {
          ++counters_.udp_wrong;
          note("udp: junk answer of " + std::to_string(reply->size()) + " bytes");
        }
      }
      if (answered) {
        ++counters_.udp_answered;
      } else {
        ++counters_.udp_lost;
        note("udp: no answer to seq " + std::to_string(seq));
      }
    }
    ++seq;
    std::this_thread::sleep_for(pause);
  }
}

std::string Load::summary() const {
  const auto& c = counters_;
  std::ostringstream s;
  s << "requests ok " << c.requests_ok << ", connects " << c.connects << ", failed connects " << c.failed_connects
    << ", resets " << c.resets << ", partial " << c.partial << ", wrong " << c.wrong << ", timeouts " << c.timeouts
    << ", errors " << c.errors << ", EOF after a sent request " << c.eof_after_send << ", clean closes (seen before sending) "
    << c.clean_closes << ", Unix requests that crossed the server's FIN " << c.unix_close_crossed << "; udp sent " << c.udp_sent << ", answered "
    << c.udp_answered << ", lost " << c.udp_lost << ", wrong " << c.udp_wrong;
  std::lock_guard lock(mu_);
  for (const auto& n : notes_) s << "\n  " << n;
  return s.str();
}

std::vector<std::string> Load::failure_notes() const {
  std::lock_guard lock(mu_);
  return notes_;
}

// ---- files, ports, addresses ----

::testing::AssertionResult replace_file(const std::string& from, const std::string& to) {
  std::string tmp = to + ".tmp-replace";
  {
    std::ifstream in(from, std::ios::binary);
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!in || !out) return ::testing::AssertionFailure() << "cannot copy " << from << " to " << tmp;
    out << in.rdbuf();
    if (!out.flush()) return ::testing::AssertionFailure() << "write " << tmp << " failed";
  }
  struct stat st {};
  if (::stat(from.c_str(), &st) != 0) return ::testing::AssertionFailure() << "stat " << from;
  ::chmod(tmp.c_str(), st.st_mode & 07777);
  if (::rename(tmp.c_str(), to.c_str()) != 0)
    return ::testing::AssertionFailure() << "rename " << tmp << ": " << std::strerror(errno);
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult replace_with_script(const std::string& to, const std::string& script) {
  std::string tmp = to + ".tmp-script";
  write_file(tmp, script);
  if (::chmod(tmp.c_str(), 0755) != 0) return ::testing::AssertionFailure() << "chmod " << tmp;
  if (::rename(tmp.c_str(), to.c_str()) != 0)
    return ::testing::AssertionFailure() << "rename " << tmp << ": " << std::strerror(errno);
  return ::testing::AssertionSuccess();
}

std::uint16_t pick_free_port() {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sin), sizeof sin) != 0) return 0;
  return local_port(fd.get());
}

std::string socket_address(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "(getsockname failed)";
  if (ss.ss_family == AF_UNIX) {
    auto* sun = reinterpret_cast<sockaddr_un*>(&ss);
    std::size_t n = len - offsetof(sockaddr_un, sun_path);
    if (n > 0 && sun->sun_path[0] == '\0') return "@" + std::string(sun->sun_path + 1, n - 1);
    return std::string(sun->sun_path, strnlen(sun->sun_path, n));
  }
  return format_inet(ss);
}

}  // namespace echorelay::test
