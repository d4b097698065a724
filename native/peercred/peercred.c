/*
 * peercred: the credentials (uid, gid, pid) of the process at the other end of a connected Unix socket.
 *
 * Exports peercred(fd) -> { uid, gid, pid }, using getsockopt(SO_PEERCRED) on Linux. The kernel
 * records these at connect() time, so a peer cannot forge them.
 *
 * Also nodump(): this process writes no core file (RLIMIT_CORE 0, soft and hard) and is not dumpable
 * (prctl PR_SET_DUMPABLE 0), so that another process of the same uid cannot read its memory or its
 * environment (/proc/<pid>/mem, /proc/<pid>/environ, ptrace). It is here, beside peercred, so that
 * lessor builds one addon, not two.
 *
 * On other platforms both functions exist but always throw "not supported". Plain C against the
 * Node-API C header.
 */
#define _GNU_SOURCE
#include <node_api.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "handoff.h"

#ifdef __linux__
#include <sys/prctl.h>
#include <sys/xattr.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#endif

/* Throws a JS Error with `message` and returns NULL (for `return throw_error(...)`). */
static napi_value throw_error(napi_env env, const char *code, const char *message) {
  napi_throw_error(env, code, message);
  return NULL;
}

/* Sets obj[name] = value (a double) and reports whether it worked. */
static int set_number(napi_env env, napi_value obj, const char *name, double value) {
  napi_value v;
  if (napi_create_double(env, value, &v) != napi_ok) return 0;
  return napi_set_named_property(env, obj, name, v) == napi_ok;
}

static napi_value peercred(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 1) return throw_error(env, "EINVAL", "peercred(fd): fd is required");

  napi_valuetype type;
  if (napi_typeof(env, argv[0], &type) != napi_ok) return NULL;
  if (type != napi_number) return throw_error(env, "EINVAL", "peercred(fd): fd must be a number");
  double d;
  if (napi_get_value_double(env, argv[0], &d) != napi_ok) return NULL;
  if (!(d >= 0 && d <= 2147483647.0) || d != (double)(int)d) {
    return throw_error(env, "EINVAL", "peercred(fd): fd must be a non-negative integer");
  }
  int fd = (int)d;

#ifdef __linux__
  struct ucred cred;
  socklen_t len = sizeof(cred);
  memset(&cred, 0, sizeof(cred));
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    int err = errno;
    char msg[256];
    snprintf(msg, sizeof(msg), "getsockopt(SO_PEERCRED) failed on fd %d: %s", fd, strerror(err));
    return throw_error(env, "EPEERCRED", msg);
  }
  if (len != sizeof(cred)) return throw_error(env, "EPEERCRED", "getsockopt(SO_PEERCRED) returned a short result");

  napi_value out;
  if (napi_create_object(env, &out) != napi_ok) return NULL;
  if (!set_number(env, out, "uid", (double)cred.uid) || !set_number(env, out, "gid", (double)cred.gid) ||
      !set_number(env, out, "pid", (double)cred.pid)) {
    return throw_error(env, "EPEERCRED", "peercred: could not build the result object");
  }
  return out;
#else
  (void)fd;
  return throw_error(env, "ENOTSUP", "peercred: SO_PEERCRED is not supported on this platform");
#endif
}

/* Throws an Error naming `call` and errno's text, and returns NULL. */
static napi_value throw_errno(napi_env env, const char *call) {
  int err = errno;
  char msg[256];
  snprintf(msg, sizeof(msg), "%s failed: %s", call, strerror(err));
  return throw_error(env, "ENODUMP", msg);
}

static napi_value nodump(napi_env env, napi_callback_info info) {
  (void)info;
#ifdef __linux__
  struct rlimit none = {0, 0};
  if (setrlimit(RLIMIT_CORE, &none) != 0) return throw_errno(env, "setrlimit(RLIMIT_CORE, 0)");
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return throw_errno(env, "prctl(PR_SET_DUMPABLE, 0)");
  if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0) return throw_error(env, "ENODUMP", "prctl(PR_SET_DUMPABLE, 0) did not take");
  napi_value undefined;
  if (napi_get_undefined(env, &undefined) != napi_ok) return NULL;
  return undefined;
#else
  return throw_error(env, "ENOTSUP", "nodump: prctl(PR_SET_DUMPABLE) is not supported on this platform");
#endif
}

/*
 * hasacl(path): whether `path` (links followed) carries a POSIX access ACL, whose named
 * entries st_mode's group bits (the mask) do not tell apart from the owning group. Throws on errors
 * other than "no such attribute" / "not supported".
 */
static napi_value hasacl(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1) return throw_error(env, "EINVAL", "hasacl(path)");
  char path[4096];
  size_t len = 0;
  if (napi_get_value_string_utf8(env, argv[0], path, sizeof path, &len) != napi_ok || len >= sizeof path - 1 || strlen(path) != len) return throw_error(env, "EINVAL", "hasacl: bad path");
  bool has = false;
#ifdef __linux__
  ssize_t n = getxattr(path, "system.posix_acl_access", NULL, 0);
  if (n > 0) has = true;
  else if (n < 0 && errno != ENODATA && errno != ENOTSUP && errno != EOPNOTSUPP) return throw_errno(env, "getxattr(system.posix_acl_access)");
#endif
  napi_value out;
  if (napi_get_boolean(env, has, &out) != napi_ok) return NULL;
  return out;
}

/* Sets exports[name] to a function calling `cb`, and reports whether it worked. */
static int export_function(napi_env env, napi_value exports, const char *name, napi_callback cb) {
  napi_value fn;
  if (napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, NULL, &fn) != napi_ok) return 0;
  return napi_set_named_property(env, exports, name, fn) == napi_ok;
}

static napi_value init(napi_env env, napi_value exports) {
  if (!export_function(env, exports, "peercred", peercred) || !export_function(env, exports, "nodump", nodump) ||
      !export_function(env, exports, "hasacl", hasacl) ||
      !register_handoff(env, exports))
    return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
