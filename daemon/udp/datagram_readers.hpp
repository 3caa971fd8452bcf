// The sockets of one datagram listener, read on the daemon's workers. Each socket is
// registered on the Pollers of `workers` of them (all by default; EPOLLEXCLUSIVE, so
// an arrival wakes one): a worker takes a batch with recvmmsg, drops what the
// listener's source policy refuses or what was truncated, and hands the rest to the
// handler's `serve` on its own thread, at most kBatchesPerTurn batches before the
// loop's other work. There is no queue of our own: datagrams wait in the socket's
// receive buffer, and what the kernel drops there is read from SO_MEMINFO and counted
// as received and dropped (queue_full). Used by the echo, the mirror and the relay.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "config/config.hpp"
#include "net/poller.hpp"
#include "obs/metrics.hpp"
#include "udp/datagram_io.hpp"

namespace echorelay::udp {

// One batch as the handler sees it: datagram `index[k]` for k < count was admitted;
// its bytes are payload(index[k]) for len(index[k]), its sender names[index[k]].
struct ReceivedBatch {
  int fd;           // the socket it arrived on (replies leave from it)
  unsigned worker;  // the loop it is served on: an index into the `loops` given
  const mmsghdr* msgs;
  const sockaddr_storage* names;
  const std::array<unsigned char, kControlSize>* control;
  const SlotBuffers* buffers;
  std::array<unsigned, kBatch> index;
  unsigned count;

  std::byte* payload(unsigned i) const { return buffers->slot(i); }
  std::uint32_t len(unsigned i) const { return msgs[i].msg_len; }
  // PKTINFO of datagram i, 0 bytes when the kernel cut the control data.
  socklen_t control_len(unsigned i) const {
    return (msgs[i].msg_hdr.msg_flags & MSG_CTRUNC) != 0 ? 0 : static_cast<socklen_t>(msgs[i].msg_hdr.msg_controllen);
  }
};

class DatagramReaders {
 public:
  using Serve = std::function<void(ReceivedBatch&)>;

  // Sockets are borrowed (the caller keeps them for a successor); `serve` runs on the
  // worker threads, possibly on several at once.
  DatagramReaders(const config::Listener& listener, std::vector<int> sockets, obs::ListenerCounters& counters,
                  std::vector<net::LoopRef> loops, Serve serve);
  // The loops must have stopped running, or stop()'s `stopped` have run: what is still
  // registered is taken off the pollers here (posted to a loop still running, waited for).
  ~DatagramReaders();
  DatagramReaders(const DatagramReaders&) = delete;
  DatagramReaders& operator=(const DatagramReaders&) = delete;

  // Registers every socket with its workers' pollers. Call before the loops run (it
  // touches the pollers directly); throws std::system_error when the kernel refuses.
  void start();
  // Every worker lets go of the sockets on its own loop, after serving, when
  // `sweep_sockets`, what the sockets hold (bounded): a process closing them for good
  // (SIGTERM) is the last to read those datagrams. `stopped` runs once, on the last
  // worker's thread, when no loop touches the sockets any more: then they may close.
  // Any thread; later calls do nothing.
  void stop(bool sweep_sockets, std::function<void()> stopped);

  unsigned readers_per_socket() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace echorelay::udp
