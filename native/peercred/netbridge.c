/*
 * lessor-netbridge PORT CMD [ARGS...]: the first program of `lessor run`'s sandbox (network "proxy").
 *
 * The sandbox's network namespace has only a loopback interface. This program listens on
 * 127.0.0.1:PORT there, hands the listening socket to lessor through the Unix socket it finds on
 * descriptor 6 (one byte with SCM_RIGHTS; lessor's end is native/peercred/handoff.c), closes both,
 * and replaces itself with CMD (execv: CMD is an absolute path, found by lessor). lessor's proxy then
 * accepts the agent's connections on that socket itself: no process relays them, and the agent's
 * `HTTPS_PROXY=http://127.0.0.1:PORT` leads to lessor's proxy and nowhere else.
 *
 * It holds nothing secret and keeps nothing open into CMD (both sockets are close-on-exec or closed).
 * Exit codes when CMD was not started, as a shell's: 127 CMD not found, 126 anything else.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fdmsg.h"

#define HANDOFF_FD 6

static int fail(const char *what) {
  fprintf(stderr, "lessor: the sandbox's proxy bridge failed: %s: %s\n", what, strerror(errno));
  return 126;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "lessor-netbridge: usage: lessor-netbridge PORT CMD [ARGS...] (lessor run starts it in its sandbox, with a socket to lessor on descriptor %d)\n", HANDOFF_FD);
    return 126;
  }
  char *end = NULL;
  errno = 0;
  long port = strtol(argv[1], &end, 10);
  if (errno != 0 || end == argv[1] || *end != '\0' || port < 1 || port > 65535) {
    fprintf(stderr, "lessor-netbridge: PORT must be a number from 1 to 65535, not \"%s\"\n", argv[1]);
    return 126;
  }

  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return fail("socket");
  int one = 1;
  if (setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) return fail("setsockopt");
  struct sockaddr_in a;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons((unsigned short)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(s, (struct sockaddr *)&a, sizeof(a)) != 0) return fail("bind 127.0.0.1");
  if (listen(s, 511) != 0) return fail("listen");

  char byte = 'L';
  struct iovec iov;
  union {
    struct cmsghdr h;
    char buf[CMSG_SPACE(sizeof(int))];
  } control;
  struct msghdr m;
  fdmsg_init(&m, &iov, &byte, control.buf, sizeof(control.buf));
  struct cmsghdr *h = CMSG_FIRSTHDR(&m);
  h->cmsg_level = SOL_SOCKET;
  h->cmsg_type = SCM_RIGHTS;
  h->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(h), &s, sizeof(int));
  ssize_t n;
  do n = sendmsg(HANDOFF_FD, &m, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n != 1) return fail("handing the listener to lessor");
  close(s);
  close(HANDOFF_FD);

  execv(argv[2], argv + 2);
  int err = errno;
  fprintf(stderr, "lessor: cannot run \"%s\": %s\n", argv[2], strerror(err));
  return err == ENOENT ? 127 : 126;
}
