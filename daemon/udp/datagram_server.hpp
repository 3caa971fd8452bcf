// What App asks of a datagram listener's server (echo, mirror, relay): start on the
// workers, and let go of the sockets when the drain or a handover says so.
#pragma once

#include <functional>

namespace echorelay::udp {

// A server's destructor runs once the loops have stopped, or once stop()'s `stopped`
// has run: what is still registered on a Poller is taken off there, which only the
// loop's own thread may do while it runs.
class DatagramServer {
 public:
  DatagramServer() = default;
  virtual ~DatagramServer() = default;
  DatagramServer(const DatagramServer&) = delete;
  DatagramServer& operator=(const DatagramServer&) = delete;
  // Before the worker loops run; throws when the kernel refuses (names the listener).
  virtual void start() = 0;
  // Every worker lets go of the sockets on its own loop, after serving, when `sweep`,
  // what the sockets hold (bounded). `stopped` runs once, on the last worker's thread,
  // when no loop reads the sockets any more: then the caller may close its own (a
  // server that still sends after, the relay's sessions, holds duplicates of its own).
  // Any thread; never waits for a worker. Later calls do nothing.
  virtual void stop(bool sweep, std::function<void()> stopped) = 0;
};

}  // namespace echorelay::udp
