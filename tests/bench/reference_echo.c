/* reference-echo: the ceiling for the echo benchmarks in tests/bench.
 * One thread, one epoll set, non-blocking sockets: whatever arrives on TCP, on a Unix
 * stream path or in a UDP datagram goes straight back. No framing, limits or timeouts:
 * it measures what the kernel and this machine allow, not a product. The relay rows
 * use it as the backend for every relay (echorelayd, HAProxy, nginx, socat). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum { kTagTcpListen = -1, kTagUnixListen = -2, kTagUdp = -3 };
enum { kReadSize = 64 * 1024, kUdpBatch = 64, kMaxDatagram = 65536 };

/* Bytes a peer did not take yet. While a connection has some, it is not read from:
 * that is the only back-pressure an echo server needs. */
struct pending {
  char *data;
  size_t len;
  size_t off;
};

static struct pending *pendings; /* indexed by fd */
static int epfd;
static volatile sig_atomic_t stop;

static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void close_conn(int fd) {
  free(pendings[fd].data);
  pendings[fd].data = NULL;
  pendings[fd].len = pendings[fd].off = 0;
  close(fd); /* also removes it from the epoll set */
}

static void watch(int op, int fd, uint32_t events) {
  struct epoll_event ev = {.events = events, .data.u64 = (uint64_t)(uint32_t)fd};
  if (epoll_ctl(epfd, op, fd, &ev) < 0) die("epoll_ctl");
}

static int listen_inet(int type, const char *host, int port, int *bound_port) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
    fprintf(stderr, "reference-echo: bad IPv4 address %s\n", host);
    exit(2);
  }
  int fd = socket(AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
  if (type == SOCK_STREAM && listen(fd, 4096) < 0) die("listen");
  socklen_t len = sizeof sa;
  getsockname(fd, (struct sockaddr *)&sa, &len);
  *bound_port = ntohs(sa.sin_port);
  return fd;
}

static int listen_unix(const char *path) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path) {
    fprintf(stderr, "reference-echo: unix path too long\n");
    exit(2);
  }
  strcpy(sa.sun_path, path);
  unlink(path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket unix");
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind unix");
  if (listen(fd, 4096) < 0) die("listen unix");
  return fd;
}

static void accept_all(int lfd, int nodelay) {
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return; /* EAGAIN, or EMFILE: try again on the next wakeup */
    if (nodelay) {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    watch(EPOLL_CTL_ADD, fd, EPOLLIN);
  }
}

/* Sends what is pending; returns 0 when all went out, 1 when the peer is full, -1 on error. */
static int flush(int fd) {
  struct pending *p = &pendings[fd];
  while (p->off < p->len) {
    ssize_t n = write(fd, p->data + p->off, p->len - p->off);
    if (n < 0) return errno == EAGAIN ? 1 : -1;
    p->off += (size_t)n;
  }
  free(p->data);
  p->data = NULL;
  p->len = p->off = 0;
  return 0;
}

static void on_stream(int fd, uint32_t events) {
  static char buf[kReadSize];
  if (pendings[fd].data) {
    int r = flush(fd);
    if (r < 0) close_conn(fd);
    else if (r == 0) watch(EPOLL_CTL_MOD, fd, EPOLLIN);
    return;
  }
  if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
  ssize_t n = read(fd, buf, sizeof buf);
  if (n == 0 || (n < 0 && errno != EAGAIN)) {
    close_conn(fd);
    return;
  }
  if (n < 0) return;
  ssize_t w = write(fd, buf, (size_t)n);
  if (w < 0 && errno != EAGAIN) {
    close_conn(fd);
    return;
  }
  if (w < 0) w = 0;
  if (w < n) {
    struct pending *p = &pendings[fd];
    p->len = (size_t)(n - w);
    p->off = 0;
    p->data = malloc(p->len);
    if (!p->data) die("malloc");
    memcpy(p->data, buf + w, p->len);
    watch(EPOLL_CTL_MOD, fd, EPOLLOUT);
  }
}

/* One recvmmsg batch, echoed with one sendmmsg: the cheapest UDP echo the kernel offers. */
static void on_udp(int fd) {
  static char bufs[kUdpBatch][kMaxDatagram];
  static struct iovec iov[kUdpBatch];
  static struct sockaddr_storage from[kUdpBatch];
  static struct mmsghdr msgs[kUdpBatch];
  for (int i = 0; i < kUdpBatch; ++i) {
    iov[i].iov_base = bufs[i];
    iov[i].iov_len = kMaxDatagram;
    memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    msgs[i].msg_hdr.msg_name = &from[i];
    msgs[i].msg_hdr.msg_namelen = sizeof from[i];
  }
  int n = recvmmsg(fd, msgs, kUdpBatch, MSG_DONTWAIT, NULL);
  if (n <= 0) return;
  for (int i = 0; i < n; ++i) iov[i].iov_len = msgs[i].msg_len;
  int sent = 0;
  while (sent < n) {
    int r = sendmmsg(fd, msgs + sent, (unsigned)(n - sent), MSG_DONTWAIT);
    if (r <= 0) break; /* a full send buffer drops datagrams, as UDP may */
    sent += r;
  }
}

static void usage(void) {
  fprintf(stderr,
          "usage: reference-echo [--bind IPV4] [--tcp PORT] [--udp PORT] [--unix PATH] [--ready-file FILE]\n"
          "  PORT 0 binds a free port; FILE receives 'tcp PORT', 'udp PORT', 'unix PATH' lines\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1", *unix_path = NULL, *ready_file = NULL;
  int tcp_port = -1, udp_port = -1;
  for (int i = 1; i < argc; ++i) {
    if (i + 1 >= argc) usage();
    if (!strcmp(argv[i], "--bind")) host = argv[++i];
    else if (!strcmp(argv[i], "--tcp")) tcp_port = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--udp")) udp_port = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--unix")) unix_path = argv[++i];
    else if (!strcmp(argv[i], "--ready-file")) ready_file = argv[++i];
    else usage();
  }
  if (tcp_port < 0 && udp_port < 0 && !unix_path) usage();

  /* Idle-memory runs hold ~10,000 connections: use the whole hard limit. */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  pendings = calloc((size_t)rl.rlim_cur + 1, sizeof *pendings);
  if (!pendings) die("calloc");
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);

  epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) die("epoll_create1");
  int tcp_fd = -1, udp_fd = -1, unix_fd = -1, tcp_bound = 0, udp_bound = 0;
  struct epoll_event ev = {.events = EPOLLIN};
  if (tcp_port >= 0) {
    tcp_fd = listen_inet(SOCK_STREAM, host, tcp_port, &tcp_bound);
    ev.data.u64 = (uint64_t)(int64_t)kTagTcpListen;
    epoll_ctl(epfd, EPOLL_CTL_ADD, tcp_fd, &ev);
  }
  if (udp_port >= 0) {
    udp_fd = listen_inet(SOCK_DGRAM, host, udp_port, &udp_bound);
    ev.data.u64 = (uint64_t)(int64_t)kTagUdp;
    epoll_ctl(epfd, EPOLL_CTL_ADD, udp_fd, &ev);
  }
  if (unix_path) {
    unix_fd = listen_unix(unix_path);
    ev.data.u64 = (uint64_t)(int64_t)kTagUnixListen;
    epoll_ctl(epfd, EPOLL_CTL_ADD, unix_fd, &ev);
  }

  if (ready_file) {
    /* Written to a temporary name and renamed, so a reader never sees half a file. */
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", ready_file);
    FILE *f = fopen(tmp, "w");
    if (!f) die("fopen ready file");
    if (tcp_fd >= 0) fprintf(f, "tcp %d\n", tcp_bound);
    if (udp_fd >= 0) fprintf(f, "udp %d\n", udp_bound);
    if (unix_path) fprintf(f, "unix %s\n", unix_path);
    fclose(f);
    if (rename(tmp, ready_file) < 0) die("rename ready file");
  }

  struct epoll_event events[256];
  while (!stop) {
    int n = epoll_wait(epfd, events, 256, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    for (int i = 0; i < n; ++i) {
      int64_t tag = (int64_t)events[i].data.u64;
      if (tag == kTagTcpListen) accept_all(tcp_fd, 1);
      else if (tag == kTagUnixListen) accept_all(unix_fd, 0);
      else if (tag == kTagUdp) on_udp(udp_fd);
      else on_stream((int)tag, events[i].events);
    }
  }
  if (unix_path) unlink(unix_path);
  return 0;
}
