/*
 * handoff: how lessor run receives the listening socket that its sandbox's bridge made (netbridge.c).
 *
 * socketpair() -> [ours, theirs]: a connected pair of AF_UNIX stream sockets, both close-on-exec.
 * `theirs` goes to the sandbox as a descriptor of bwrap's child (spawn's stdio; dup2 clears the
 * close-on-exec flag there) and is then closed here.
 *
 * recvfd(ours, timeoutMs) -> Promise<fd>: waits, on a thread of libuv's pool (never the event loop),
 * for one byte carrying exactly one descriptor (SCM_RIGHTS), and resolves with it once it has checked
 * that it is a listening TCP socket bound to an IPv4 loopback address; anything else is closed and
 * the promise rejects with an Error whose `code` says why: EPIPE (the other end closed without
 * sending one: bwrap or the bridge failed, and said so), ETIMEDOUT, EPROTO (not exactly one
 * descriptor, or not such a socket), or the errno of the failed call. `ours` is left open.
 *
 * Plain C against the Node-API C header; Linux only (elsewhere both throw "not supported").
 */
#define _GNU_SOURCE
#include <node_api.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __linux__
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include "fdmsg.h"
#endif

#include "handoff.h"

/* Reads argv[i] as a non-negative int (up to `max`), or throws and returns 0. */
static int int_arg(napi_env env, napi_value v, const char *what, double min, double max, int *out) {
  napi_valuetype type;
  double d;
  char msg[128];
  if (napi_typeof(env, v, &type) != napi_ok) return 0;
  if (type == napi_number && napi_get_value_double(env, v, &d) == napi_ok && d >= min && d <= max && d == (double)(int)d) {
    *out = (int)d;
    return 1;
  }
  snprintf(msg, sizeof(msg), "%s must be an integer from %.0f to %.0f", what, min, max);
  napi_throw_error(env, "EINVAL", msg);
  return 0;
}

#ifdef __linux__
static napi_value make_pair(napi_env env, napi_callback_info info) {
  (void)info;
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    char msg[160];
    snprintf(msg, sizeof(msg), "socketpair failed: %s", strerror(errno));
    napi_throw_error(env, "ESOCKETPAIR", msg);
    return NULL;
  }
  napi_value arr, a, b;
  if (napi_create_array_with_length(env, 2, &arr) != napi_ok || napi_create_int32(env, fds[0], &a) != napi_ok ||
      napi_create_int32(env, fds[1], &b) != napi_ok || napi_set_element(env, arr, 0, a) != napi_ok || napi_set_element(env, arr, 1, b) != napi_ok) {
    close(fds[0]);
    close(fds[1]);
    return NULL;
  }
  return arr;
}

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  int fd;
  int timeout_ms;
  int result;         /* the received descriptor, or -1 */
  const char *code;   /* on failure: the Error's code */
  char message[200];  /* on failure: what went wrong */
} recv_job;

static void fail_job(recv_job *j, const char *code, const char *what, int err) {
  j->code = code;
  if (err != 0) snprintf(j->message, sizeof(j->message), "%s: %s", what, strerror(err));
  else snprintf(j->message, sizeof(j->message), "%s", what);
}

/* 1 when `fd` is a listening TCP socket bound to 127.0.0.0/8, else 0 (and the job says why). */
static int is_loopback_listener(recv_job *j, int fd) {
  int v = 0;
  socklen_t len = sizeof(v);
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &v, &len) != 0 || v != AF_INET) {
    fail_job(j, "EPROTO", "the descriptor received is not an IPv4 socket", 0);
    return 0;
  }
  len = sizeof(v);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &len) != 0 || v != SOCK_STREAM) {
    fail_job(j, "EPROTO", "the descriptor received is not a stream socket", 0);
    return 0;
  }
  len = sizeof(v);
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) != 0 || v != 1) {
    fail_job(j, "EPROTO", "the socket received is not listening", 0);
    return 0;
  }
  struct sockaddr_in a;
  socklen_t alen = sizeof(a);
  memset(&a, 0, sizeof(a));
  if (getsockname(fd, (struct sockaddr *)&a, &alen) != 0 || a.sin_family != AF_INET || (ntohl(a.sin_addr.s_addr) >> 24) != 127) {
    fail_job(j, "EPROTO", "the socket received is not bound to a loopback address", 0);
    return 0;
  }
  return 1;
}

static void recv_execute(napi_env env, void *data) {
  (void)env;
  recv_job *j = data;
  struct pollfd p = {j->fd, POLLIN, 0};
  int r;
  do r = poll(&p, 1, j->timeout_ms);
  while (r < 0 && errno == EINTR);
  if (r < 0) {
    fail_job(j, "EPOLL", "poll", errno);
    return;
  }
  if (r == 0) { fail_job(j, "ETIMEDOUT", "no descriptor arrived in time", 0); return; }

  char byte = 0;
  struct iovec iov;
  union {
    struct cmsghdr h;
    char buf[CMSG_SPACE(sizeof(int) * 8)];
  } control;
  struct msghdr m;
  fdmsg_init(&m, &iov, &byte, control.buf, sizeof(control.buf));
  ssize_t n;
  do n = recvmsg(j->fd, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0) { fail_job(j, "ERECVMSG", "recvmsg", errno); return; }

  int fds[64];
  int count = 0;
  for (struct cmsghdr *h = CMSG_FIRSTHDR(&m); h != NULL; h = CMSG_NXTHDR(&m, h)) {
    if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS) continue;
    size_t k = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k && count < 64; i++) memcpy(&fds[count++], CMSG_DATA(h) + i * sizeof(int), sizeof(int));
  }
  if (n == 0 && count == 0) { fail_job(j, "EPIPE", "the sandbox closed the hand-over without sending its listener", 0); return; }
  if (count != 1 || (m.msg_flags & MSG_CTRUNC) != 0) {
    for (int i = 0; i < count; i++) close(fds[i]);
    { fail_job(j, "EPROTO", "the hand-over did not carry exactly one descriptor", 0); return; }
  }
  if (!is_loopback_listener(j, fds[0])) {
    close(fds[0]);
    return;
  }
  j->result = fds[0];
}

static void recv_complete(napi_env env, napi_status status, void *data) {
  recv_job *j = data;
  napi_value v = NULL;
  if (status == napi_ok && j->result >= 0) {
    if (napi_create_int32(env, j->result, &v) == napi_ok) napi_resolve_deferred(env, j->deferred, v);
  } else {
    napi_value code, msg;
    if (status != napi_ok) fail_job(j, "ECANCELED", "the wait for the sandbox's listener was cancelled", 0);
    if (napi_create_string_utf8(env, j->code, NAPI_AUTO_LENGTH, &code) == napi_ok &&
        napi_create_string_utf8(env, j->message, NAPI_AUTO_LENGTH, &msg) == napi_ok && napi_create_error(env, code, msg, &v) == napi_ok)
      napi_reject_deferred(env, j->deferred, v);
    if (j->result >= 0) close(j->result);
  }
  napi_delete_async_work(env, j->work);
  free(j);
}

static napi_value recvfd(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 2) {
    napi_throw_error(env, "EINVAL", "recvfd(fd, timeoutMs): both are required");
    return NULL;
  }
  int fd, timeout;
  if (!int_arg(env, argv[0], "recvfd(fd, …): fd", 0, 2147483647.0, &fd)) return NULL;
  if (!int_arg(env, argv[1], "recvfd(…, timeoutMs): timeoutMs", 0, 2147483647.0, &timeout)) return NULL;
  recv_job *j = calloc(1, sizeof(recv_job));
  if (j == NULL) {
    napi_throw_error(env, "ENOMEM", "recvfd: out of memory");
    return NULL;
  }
  j->fd = fd;
  j->timeout_ms = timeout;
  j->result = -1;
  napi_value promise, name;
  if (napi_create_promise(env, &j->deferred, &promise) != napi_ok || napi_create_string_utf8(env, "lessor.recvfd", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, recv_execute, recv_complete, j, &j->work) != napi_ok) {
    free(j);
    return NULL;
  }
  if (napi_queue_async_work(env, j->work) != napi_ok) {
    napi_delete_async_work(env, j->work);
    free(j);
    return NULL;
  }
  return promise;
}
#else
static napi_value make_pair(napi_env env, napi_callback_info info) {
  (void)info;
  napi_throw_error(env, "ENOTSUP", "socketpair: not supported on this platform");
  return NULL;
}
static napi_value recvfd(napi_env env, napi_callback_info info) {
  (void)info;
  napi_throw_error(env, "ENOTSUP", "recvfd: not supported on this platform");
  return NULL;
}
#endif

int register_handoff(napi_env env, napi_value exports) {
  napi_value a, b;
  if (napi_create_function(env, "socketpair", NAPI_AUTO_LENGTH, make_pair, NULL, &a) != napi_ok) return 0;
  if (napi_create_function(env, "recvfd", NAPI_AUTO_LENGTH, recvfd, NULL, &b) != napi_ok) return 0;
  return napi_set_named_property(env, exports, "socketpair", a) == napi_ok && napi_set_named_property(env, exports, "recvfd", b) == napi_ok;
}
