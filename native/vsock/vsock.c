/*
 * vsock: the AF_VSOCK listener of the lessor daemon (QEMU/vhost-vsock guests), in plain C against the
 * Node-API C header. Linux only; elsewhere every function throws "not supported".
 *
 *   listen(port, backlog) -> fd          socket(AF_VSOCK) bound to VMADDR_CID_ANY:port, listening.
 *                                         Binding and listening contact nobody.
 *   watch(fd, onAccept) -> watcher        a thread accepts on fd and calls onAccept({ fd, cid, port })
 *                                         on the main thread for each connection (cid/port -1 when
 *                                         the socket is not AF_VSOCK).
 *   unwatch(watcher)                      stops that thread (the listening fd stays open).
 *   bridge(fd) -> fd2                     Node cannot wrap an AF_VSOCK descriptor in a net.Socket
 *                                         (libuv's handle guess knows only TCP and Unix sockets), so
 *                                         a thread relays bytes between fd and one end of a new Unix
 *                                         socketpair; the other end, fd2, is returned for
 *                                         net.Socket({ fd: fd2 }). Takes ownership of fd. Half
 *                                         closes are passed on; either side closing closes both.
 *   socketpair() -> [a, b]                a connected Unix stream pair (tests feed the accept path
 *                                         with it instead of a guest).
 *   close(fd)
 *
 * The peer's CID comes from accept()'s address, which the host kernel fills in: a guest cannot
 * choose it.
 */
#define _GNU_SOURCE
#include <node_api.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __linux__
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>
#endif

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char msg[256];
  snprintf(msg, sizeof(msg), "%s: %s", what, strerror(err));
  const char *code = err == EAFNOSUPPORT ? "EAFNOSUPPORT" : err == EADDRINUSE ? "EADDRINUSE" : err == EACCES ? "EACCES" : err == ENODEV ? "ENODEV" : "EVSOCK";
  napi_throw_error(env, code, msg);
  return NULL;
}

static napi_value throw_msg(napi_env env, const char *message) {
  napi_throw_error(env, "EINVAL", message);
  return NULL;
}

/* argv[i] as a whole number in [min, max], else throws and returns 0. */
static int get_uint(napi_env env, napi_value v, double min, double max, double *out, const char *what) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) return 0;
  if (t != napi_number) { throw_msg(env, what); return 0; }
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) return 0;
  if (!(d >= min && d <= max) || d != (double)(long long)d) { throw_msg(env, what); return 0; }
  *out = d;
  return 1;
}

static napi_value number(napi_env env, double d) {
  napi_value v;
  napi_create_double(env, d, &v);
  return v;
}

#ifdef __linux__

static napi_value js_listen(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  double port, backlog = 128;
  if (argc < 1 || !get_uint(env, argv[0], 1, 4294967294.0, &port, "listen(port, backlog): port must be 1..4294967294")) return NULL;
  if (argc > 1 && !get_uint(env, argv[1], 1, 65535, &backlog, "listen(port, backlog): backlog must be 1..65535")) return NULL;
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket(AF_VSOCK)", errno);
  struct sockaddr_vm addr;
  memset(&addr, 0, sizeof(addr));
  addr.svm_family = AF_VSOCK;
  addr.svm_cid = VMADDR_CID_ANY;
  addr.svm_port = (unsigned int)port;
  if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
    int err = errno;
    close(fd);
    return throw_errno(env, "bind(AF_VSOCK, VMADDR_CID_ANY)", err);
  }
  if (listen(fd, (int)backlog) != 0) {
    int err = errno;
    close(fd);
    return throw_errno(env, "listen(AF_VSOCK)", err);
  }
  return number(env, fd);
}

/* ---- the accept thread ---- */

typedef struct {
  int fd;
  int wake[2];
  pthread_t thread;
  napi_threadsafe_function tsfn;
  int stopped;
} watcher_t;

typedef struct {
  int fd;
  double cid;
  double port;
} accepted_t;

static void call_js(napi_env env, napi_value cb, void *context, void *data) {
  (void)context;
  accepted_t *a = (accepted_t *)data;
  if (env == NULL || cb == NULL) {
    /* The listener is gone: nobody will own this connection. */
    close(a->fd);
    free(a);
    return;
  }
  napi_value obj, undef;
  napi_create_object(env, &obj);
  napi_set_named_property(env, obj, "fd", number(env, a->fd));
  napi_set_named_property(env, obj, "cid", number(env, a->cid));
  napi_set_named_property(env, obj, "port", number(env, a->port));
  napi_get_undefined(env, &undef);
  free(a);
  napi_call_function(env, undef, cb, 1, &obj, NULL);
}

static void *accept_loop(void *arg) {
  watcher_t *w = (watcher_t *)arg;
  for (;;) {
    struct pollfd p[2] = {{w->fd, POLLIN, 0}, {w->wake[0], POLLIN, 0}};
    int r = poll(p, 2, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[1].revents) break; /* unwatch() */
    if (p[0].revents & (POLLERR | POLLNVAL)) break;
    if (!(p[0].revents & POLLIN)) continue;
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    int c = accept4(w->fd, (struct sockaddr *)&ss, &len, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (c < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        poll(NULL, 0, 100); /* out of descriptors: back off rather than spin */
        continue;
      }
      break;
    }
    accepted_t *a = (accepted_t *)malloc(sizeof(accepted_t));
    if (a == NULL) {
      close(c);
      continue;
    }
    a->fd = c;
    a->cid = -1;
    a->port = -1;
    if (ss.ss_family == AF_VSOCK && len >= sizeof(struct sockaddr_vm)) {
      struct sockaddr_vm *vm = (struct sockaddr_vm *)&ss;
      a->cid = vm->svm_cid;
      a->port = vm->svm_port;
    }
    if (napi_call_threadsafe_function(w->tsfn, a, napi_tsfn_nonblocking) != napi_ok) {
      close(c);
      free(a);
    }
  }
  return NULL;
}

static void watcher_stop(watcher_t *w) {
  if (w->stopped) return;
  w->stopped = 1;
  char b = 1;
  ssize_t n;
  do n = write(w->wake[1], &b, 1); while (n < 0 && errno == EINTR);
  pthread_join(w->thread, NULL);
  close(w->wake[0]);
  close(w->wake[1]);
  napi_release_threadsafe_function(w->tsfn, napi_tsfn_abort);
}

static void watcher_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  watcher_t *w = (watcher_t *)data;
  watcher_stop(w);
  free(w);
}

static napi_value js_watch(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  double fd;
  if (argc < 2 || !get_uint(env, argv[0], 0, 2147483647.0, &fd, "watch(fd, onAccept): fd must be a descriptor")) return NULL;
  napi_valuetype t;
  if (napi_typeof(env, argv[1], &t) != napi_ok) return NULL;
  if (t != napi_function) return throw_msg(env, "watch(fd, onAccept): onAccept must be a function");
  watcher_t *w = (watcher_t *)calloc(1, sizeof(watcher_t));
  if (w == NULL) return throw_errno(env, "watch", ENOMEM);
  w->fd = (int)fd;
  if (pipe2(w->wake, O_CLOEXEC) != 0) {
    int err = errno;
    free(w);
    return throw_errno(env, "pipe2", err);
  }
  napi_value name;
  napi_create_string_utf8(env, "lessor-vsock-accept", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, argv[1], NULL, name, 0, 1, NULL, NULL, NULL, call_js, &w->tsfn) != napi_ok) {
    close(w->wake[0]);
    close(w->wake[1]);
    free(w);
    return throw_msg(env, "watch: could not create the callback");
  }
  if (pthread_create(&w->thread, NULL, accept_loop, w) != 0) {
    napi_release_threadsafe_function(w->tsfn, napi_tsfn_abort);
    close(w->wake[0]);
    close(w->wake[1]);
    free(w);
    return throw_msg(env, "watch: could not start the accept thread");
  }
  napi_value handle;
  napi_create_object(env, &handle);
  if (napi_wrap(env, handle, w, watcher_finalize, NULL, NULL) != napi_ok) {
    watcher_stop(w);
    free(w);
    return throw_msg(env, "watch: could not wrap the watcher");
  }
  return handle;
}

static napi_value js_unwatch(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 1) return throw_msg(env, "unwatch(watcher): watcher is required");
  void *data = NULL;
  if (napi_unwrap(env, argv[0], &data) != napi_ok || data == NULL) return throw_msg(env, "unwatch(watcher): not a watcher");
  watcher_stop((watcher_t *)data);
  return NULL;
}

/* ---- the relay thread ---- */

#define RELAY_BUF 65536

typedef struct {
  int fd[2];            /* 0: the outer connection (vsock), 1: our end of the Unix pair */
  char buf[2][RELAY_BUF]; /* buf[d]: bytes read from fd[d], to write to fd[1-d] */
  size_t len[2], off[2];
  int eof[2];           /* fd[d] gave end of file */
  int shut[2];          /* shutdown(fd[1-d], SHUT_WR) done after eof[d] */
  int dead[2];          /* fd[d] can no longer be written to */
} relay_t;

static void *relay_loop(void *arg) {
  relay_t *r = (relay_t *)arg;
  for (;;) {
    int done[2];
    for (int d = 0; d < 2; d++) done[d] = r->dead[1 - d] || (r->eof[d] && r->len[d] == 0);
    if (done[0] && done[1]) break;
    struct pollfd p[2];
    for (int i = 0; i < 2; i++) {
      p[i].fd = r->fd[i];
      p[i].events = 0;
      p[i].revents = 0;
      int want_read = !done[i] && !r->eof[i] && r->len[i] == 0;
      int want_write = !r->dead[i] && r->len[1 - i] > 0;
      if (want_read) p[i].events |= POLLIN;
      if (want_write) p[i].events |= POLLOUT;
      /* A side still open is watched even with no events asked, so that its hang-up (the peer
         closed) is seen; one already known dead with nothing to read is left out, so that its
         hang-up cannot wake us in a loop. */
      if (!want_read && !want_write && r->dead[i]) p[i].fd = -1;
    }
    int n = poll(p, 2, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; i++) {
      if (p[i].fd < 0) continue;
      if (p[i].revents & (POLLERR | POLLNVAL)) {
        r->dead[i] = 1;
        r->eof[i] = 1;
        r->len[i] = 0;
        continue;
      }
      if ((p[i].events & POLLIN) && (p[i].revents & (POLLIN | POLLHUP))) {
        ssize_t k = read(r->fd[i], r->buf[i], RELAY_BUF);
        if (k > 0) {
          r->len[i] = (size_t)k;
          r->off[i] = 0;
        } else if (k == 0) {
          r->eof[i] = 1;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          r->eof[i] = 1;
          r->dead[i] = 1;
        }
      }
      if ((p[i].events & POLLOUT) && (p[i].revents & (POLLOUT | POLLHUP))) {
        int s = 1 - i;
        ssize_t k = send(r->fd[i], r->buf[s] + r->off[s], r->len[s], MSG_NOSIGNAL);
        if (k > 0) {
          r->off[s] += (size_t)k;
          r->len[s] -= (size_t)k;
        } else if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          r->dead[i] = 1;
          r->len[s] = 0;
        }
      }
      if (p[i].revents & POLLHUP) {
        /* Both directions of this side are shut (its peer closed): what is still to read is read
           above and on later turns; nothing more can be written to it. */
        r->dead[i] = 1;
        r->len[1 - i] = 0;
      }
    }
    /* Pass a half close on once everything before it was written. */
    for (int d = 0; d < 2; d++) {
      if (r->eof[d] && r->len[d] == 0 && !r->shut[d] && !r->dead[1 - d]) {
        shutdown(r->fd[1 - d], SHUT_WR);
        r->shut[d] = 1;
      }
    }
  }
  close(r->fd[0]);
  close(r->fd[1]);
  free(r);
  return NULL;
}

static int set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  return fl >= 0 && fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0;
}

static napi_value js_bridge(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  double fd;
  if (argc < 1 || !get_uint(env, argv[0], 0, 2147483647.0, &fd, "bridge(fd): fd must be a descriptor")) return NULL;
  int outer = (int)fd;
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    int err = errno;
    close(outer);
    return throw_errno(env, "socketpair", err);
  }
  relay_t *r = (relay_t *)calloc(1, sizeof(relay_t));
  if (r == NULL || !set_nonblock(outer) || !set_nonblock(pair[1])) {
    free(r);
    close(outer);
    close(pair[0]);
    close(pair[1]);
    return throw_errno(env, "bridge", ENOMEM);
  }
  r->fd[0] = outer;
  r->fd[1] = pair[1];
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  int err = pthread_create(&(pthread_t){0}, &attr, relay_loop, r);
  pthread_attr_destroy(&attr);
  if (err != 0) {
    free(r);
    close(outer);
    close(pair[0]);
    close(pair[1]);
    return throw_errno(env, "bridge: pthread_create", err);
  }
  return number(env, pair[0]);
}

static napi_value js_socketpair(napi_env env, napi_callback_info info) {
  (void)info;
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) return throw_errno(env, "socketpair", errno);
  napi_value arr;
  napi_create_array_with_length(env, 2, &arr);
  napi_set_element(env, arr, 0, number(env, pair[0]));
  napi_set_element(env, arr, 1, number(env, pair[1]));
  return arr;
}

static napi_value js_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  double fd;
  if (argc < 1 || !get_uint(env, argv[0], 0, 2147483647.0, &fd, "close(fd): fd must be a descriptor")) return NULL;
  if (close((int)fd) != 0) return throw_errno(env, "close", errno);
  return NULL;
}

#else /* not Linux */

static napi_value unsupported(napi_env env, napi_callback_info info) {
  (void)info;
  napi_throw_error(env, "ENOTSUP", "vsock: AF_VSOCK is only supported on Linux");
  return NULL;
}
#define js_listen unsupported
#define js_watch unsupported
#define js_unwatch unsupported
#define js_bridge unsupported
#define js_socketpair unsupported
#define js_close unsupported

#endif

static napi_value init(napi_env env, napi_value exports) {
  const struct { const char *name; napi_callback fn; } fns[] = {
      {"listen", js_listen}, {"watch", js_watch}, {"unwatch", js_unwatch},
      {"bridge", js_bridge}, {"socketpair", js_socketpair}, {"close", js_close},
  };
  for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
    napi_value fn;
    if (napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &fn) != napi_ok) return NULL;
    if (napi_set_named_property(env, exports, fns[i].name, fn) != napi_ok) return NULL;
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
