// UDP echo on the daemon's workers (udp/datagram_readers.hpp reads): each admitted
// datagram of a batch is answered, with its exact bytes and from the address it was
// sent to, by one sendmmsg in the same turn, straight from the buffers it was read into.
#include "udp/udp_echo.hpp"

#include <netinet/in.h>
#include <sys/socket.h>

#include <spdlog/spdlog.h>

#include <array>
#include <string>

#include "net/own_listeners.hpp"
#include "udp/datagram_readers.hpp"

namespace echorelay::udp {
namespace {

class EchoServer final : public DatagramServer {
 public:
  // A worker's reply batch: only that worker's thread touches it.
  struct Replies {
    std::array<mmsghdr, kBatch> msgs{};
    std::array<iovec, kBatch> iov{};
    alignas(cmsghdr) std::array<std::array<unsigned char, kControlSize>, kBatch> control{};
  };

  EchoServer(const config::Listener& listener, std::vector<int> sockets, obs::ListenerCounters& counters,
             std::vector<net::LoopRef> loops)
      : name_(listener.name),
        counters_(counters),
        deny_our_ports_(listener.deny_own_ports),
        queue_setting_(listener.queue),
        socket_count_(sockets.size()),
        replies_(loops.size()),
        readers_(listener, std::move(sockets), counters, std::move(loops),
                 [this](ReceivedBatch& batch) { answer(batch); }) {}

  void start() override {
    if (queue_setting_ != config::Listener{}.queue) {
      spdlog::warn("udp {}: queue = {} has no effect on an echo listener: its workers answer each datagram as "
                   "they read it, and datagrams wait in the socket's receive buffer (size it with recv_buffer)",
                   name_, queue_setting_);
    }
    readers_.start();
    spdlog::info("udp {}: serving {} socket(s), each read by {} worker(s)", name_, socket_count_,
                 readers_.readers_per_socket());
  }

  void stop(bool sweep, std::function<void()> stopped) override { readers_.stop(sweep, std::move(stopped)); }

 private:
  void answer(ReceivedBatch& batch) {
    Replies& r = replies_[batch.worker];
    unsigned n = 0;
    for (unsigned k = 0; k < batch.count; ++k) {
      const unsigned i = batch.index[k];
      const socklen_t control_len = batch.control_len(i);
      // Never answer one of our own listening addresses (an answer of ours coming
      // back would loop), nor by default any of our UDP ports, as with port 7.
      if (from_ourselves(batch.names[i], batch.control[i].data(), control_len)) {
        counters_.drop(obs::Drop::DeniedPort);
        counters_.refuse(obs::Refuse::DeniedPort);
        continue;
      }
      r.iov[n] = {batch.payload(i), batch.len(i)};
      msghdr& out = r.msgs[n].msg_hdr;
      out = msghdr{};
      out.msg_name = const_cast<sockaddr_storage*>(&batch.names[i]);
      out.msg_namelen = batch.msgs[i].msg_hdr.msg_namelen;
      out.msg_iov = &r.iov[n];
      out.msg_iovlen = 1;
      const socklen_t control = reply_control(batch.control[i].data(), control_len, r.control[n].data());
      if (control != 0) {
        out.msg_control = r.control[n].data();
        out.msg_controllen = control;
      }
      ++n;
    }
    if (n == 0) return;
    const Sent sent = send_datagrams(batch.fd, r.msgs.data(), n, name_, counters_, warn_gate_);
    counters_.add(counters_.datagrams_sent, sent.datagrams);
    counters_.add(counters_.requests, sent.datagrams);
    counters_.add(counters_.bytes_sent, sent.bytes);
  }

  bool from_ourselves(const sockaddr_storage& from, const unsigned char* control, socklen_t control_len) const {
    const std::uint16_t port = source_port(from);
    if (!net::own::is_our_udp_port(port)) return false;
    if (deny_our_ports_) return true;
    sockaddr_storage to{};
    socklen_t to_len = 0;
    const bool known = destination_address(control, control_len, 0, to, to_len);
    return net::own::is_our_udp_address(from, known ? &to : nullptr);
  }

  const std::string name_;
  obs::ListenerCounters& counters_;
  const bool deny_our_ports_;
  const std::uint32_t queue_setting_;
  const std::size_t socket_count_;
  std::vector<Replies> replies_;  // one per worker
  WarnGate warn_gate_;
  DatagramReaders readers_;  // last: its destructor stops serving before the rest goes
};

}  // namespace

std::unique_ptr<DatagramServer> make_echo_server(const config::Listener& listener, std::vector<int> sockets,
                                                 obs::ListenerCounters& counters, std::vector<net::LoopRef> loops) {
  return std::make_unique<EchoServer>(listener, std::move(sockets), counters, std::move(loops));
}

}  // namespace echorelay::udp
