/* reference-mirror: the ceiling for the mirror rows in tests/bench.
 * One thread, one UDP socket: each recvmmsg batch (32 datagrams) is sent on with one
 * sendmmsg to each of K collectors over K connected UDP sockets, MSG_DONTWAIT; what a
 * collector's socket cannot take (EAGAIN, ENOBUFS, ECONNREFUSED) is dropped and counted.
 * No sampling, source checks, rate limits or metrics: it measures what the kernel and
 * this machine allow for a UDP fan-out, not a product. Counts go to stderr at exit. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { kBatch = 32, kMaxDatagram = 65536, kMaxCollectors = 64 };

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void usage(void) {
  fprintf(stderr,
          "usage: reference-mirror [--bind IPV4] --udp PORT --to HOST:PORT [--to HOST:PORT ...] [--ready-file FILE]\n"
          "  PORT 0 binds a free port; FILE receives a 'udp PORT' line once the sockets are up\n");
  exit(2);
}

static struct sockaddr_in parse_ipv4(const char *text, int port) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (inet_pton(AF_INET, text, &sa.sin_addr) != 1) {
    fprintf(stderr, "reference-mirror: bad IPv4 address %s\n", text);
    exit(2);
  }
  return sa;
}

/* "127.0.0.1:2055" -> a UDP socket connected there. */
static int connect_collector(const char *spec) {
  char host[64];
  const char *colon = strrchr(spec, ':');
  if (!colon || (size_t)(colon - spec) >= sizeof host) usage();
  memcpy(host, spec, (size_t)(colon - spec));
  host[colon - spec] = '\0';
  struct sockaddr_in sa = parse_ipv4(host, atoi(colon + 1));
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect collector");
  return fd;
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1", *ready_file = NULL;
  const char *to[kMaxCollectors];
  int port = -1, k = 0;
  for (int i = 1; i < argc; ++i) {
    if (i + 1 >= argc) usage();
    if (!strcmp(argv[i], "--bind")) host = argv[++i];
    else if (!strcmp(argv[i], "--udp")) port = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--ready-file")) ready_file = argv[++i];
    else if (!strcmp(argv[i], "--to")) {
      if (k == kMaxCollectors) usage();
      to[k++] = argv[++i];
    } else usage();
  }
  if (port < 0 || k == 0) usage();

  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);

  struct sockaddr_in in = parse_ipv4(host, port);
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  if (bind(fd, (struct sockaddr *)&in, sizeof in) < 0) die("bind");
  socklen_t len = sizeof in;
  getsockname(fd, (struct sockaddr *)&in, &len);
  int out[kMaxCollectors];
  for (int c = 0; c < k; ++c) out[c] = connect_collector(to[c]);

  if (ready_file) {
    /* Written to a temporary name and renamed, so a reader never sees half a file. */
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", ready_file);
    FILE *f = fopen(tmp, "w");
    if (!f) die("fopen ready file");
    fprintf(f, "udp %d\n", ntohs(in.sin_port));
    fclose(f);
    if (rename(tmp, ready_file) < 0) die("rename ready file");
  }

  static char bufs[kBatch][kMaxDatagram];
  static struct iovec iov[kBatch];
  static struct mmsghdr msgs[kBatch];
  unsigned long long received = 0, sent[kMaxCollectors] = {0}, dropped[kMaxCollectors] = {0};
  struct pollfd p = {.fd = fd, .events = POLLIN};
  while (!stop) {
    for (int i = 0; i < kBatch; ++i) {
      iov[i].iov_base = bufs[i];
      iov[i].iov_len = kMaxDatagram;
      memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
      msgs[i].msg_hdr.msg_iov = &iov[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int n = recvmmsg(fd, msgs, kBatch, MSG_DONTWAIT, NULL);
    if (n <= 0) {
      if (n < 0 && errno != EAGAIN && errno != EINTR) die("recvmmsg");
      poll(&p, 1, 100);
      continue;
    }
    received += (unsigned long long)n;
    /* The same messages, without a name, go to each connected collector socket. */
    for (int i = 0; i < n; ++i) iov[i].iov_len = msgs[i].msg_len;
    for (int c = 0; c < k; ++c) {
      int done = 0;
      while (done < n) {
        int r = sendmmsg(out[c], msgs + done, (unsigned)(n - done), MSG_DONTWAIT);
        if (r > 0) {
          done += r;
          continue;
        }
        /* EAGAIN or an ICMP error on the connected socket: this one datagram is lost for
         * this collector; go on with the rest of the batch. */
        if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != ECONNREFUSED && errno != ENOBUFS &&
            errno != EINTR)
          die("sendmmsg");
        ++dropped[c];
        ++done;
      }
      sent[c] += (unsigned long long)n; /* attempted; the drops are subtracted at exit */
    }
  }
  fprintf(stderr, "reference-mirror: received %llu\n", received);
  for (int c = 0; c < k; ++c)
    fprintf(stderr, "reference-mirror: %s: sent %llu, dropped %llu\n", to[c], sent[c] - dropped[c], dropped[c]);
  return 0;
}
