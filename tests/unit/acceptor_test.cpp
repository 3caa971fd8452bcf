// StreamAcceptor's construction: a listener it cannot accept on is an error at start,
// named, not a log line followed by READY=1.
#include "listen/acceptor.hpp"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/system/system_error.hpp>
#include <string>

namespace echorelay::listen {
namespace {

config::Listener tcp_listener(const std::string& name) {
  config::Listener spec;
  spec.name = name;
  spec.protocol = config::Protocol::Tcp;
  return spec;
}

TEST(StreamAcceptor, AnFdItCannotAcceptOnFailsTheConstructionNamingTheListener) {
  boost::asio::io_context ctx;
  obs::ListenerCounters counters("t");
  const auto spec = tcp_listener("broken");
  // No fd has this number (it is above any RLIMIT_NOFILE here): the duplicate fails
  // with EBADF. A just-closed number would not do: the io_context reuses it.
  const int fd = 1 << 30;
  try {
    StreamAcceptor acceptor(ctx, fd, spec, counters, {}, [&]() -> boost::asio::io_context& { return ctx; },
                            [](StreamSocket, net::ConnectionSlot) {});
    FAIL() << "constructed on a closed fd";
  } catch (const boost::system::system_error& e) {
    EXPECT_NE(std::string(e.what()).find("listener broken: cannot start accepting"), std::string::npos) << e.what();
  }
}

TEST(StreamAcceptor, AListeningSocketIsAccepted) {
  boost::asio::io_context ctx;
  obs::ListenerCounters counters("t");
  const auto spec = tcp_listener("fine");
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::listen(fd, 4), 0);
  EXPECT_NO_THROW(StreamAcceptor(ctx, fd, spec, counters, {}, [&]() -> boost::asio::io_context& { return ctx; },
                                 [](StreamSocket, net::ConnectionSlot) {}));
  ::close(fd);
}

}  // namespace
}  // namespace echorelay::listen
