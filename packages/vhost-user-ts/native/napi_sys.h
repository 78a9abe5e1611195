/*
 * vhost-user-ts native helpers: argument and errno handling, mappings wrapped as ArrayBuffers,
 * non-blocking fds and fd readiness on the libuv loop. Header-only (static functions) so that
 * an application embedding its own addon (erofs-vfsd's shim) uses the same code, not a copy.
 * No protocol logic lives here.
 */
#ifndef VHOST_USER_TS_NAPI_SYS_H
#define VHOST_USER_TS_NAPI_SYS_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <node_api.h>
#include <uv.h>

/* Every helper is static; a module uses the ones it registers. */
#define NAPI_SYS_FN static __attribute__((unused))

#define MAX_FDS 8

#define CHECK_NAPI(env, call)                                                     \
  do {                                                                            \
    if ((call) != napi_ok) {                                                      \
      napi_throw_error((env), "EINTERNAL", "N-API call failed: " #call);          \
      return NULL;                                                                \
    }                                                                             \
  } while (0)

NAPI_SYS_FN const char *errno_name(int e) {
  switch (e) {
    case EAGAIN: return "EAGAIN";
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    case ENOMEM: return "ENOMEM";
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case EBUSY: return "EBUSY";
    case EEXIST: return "EEXIST";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    case EPIPE: return "EPIPE";
    case ECONNRESET: return "ECONNRESET";
    case ECONNREFUSED: return "ECONNREFUSED";
    case EADDRINUSE: return "EADDRINUSE";
    case ENOTCONN: return "ENOTCONN";
    case EINTR: return "EINTR";
    case ENODEV: return "ENODEV";
    case ENOSYS: return "ENOSYS";
    case EOVERFLOW: return "EOVERFLOW";
    case EMSGSIZE: return "EMSGSIZE";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case ENOTSOCK: return "ENOTSOCK";
    case ENXIO: return "ENXIO";
    case EFBIG: return "EFBIG";
    case ERANGE: return "ERANGE";
    case ENOSPC: return "ENOSPC";
    case EROFS: return "EROFS";
    case ETIMEDOUT: return "ETIMEDOUT";
    default: return "EUNKNOWN";
  }
}

/* Throws an Error whose .code is the errno name and .errno the number, like Node's fs errors. */
NAPI_SYS_FN napi_value throw_errno(napi_env env, const char *syscall, int e) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s (%s)", syscall, strerror(e), errno_name(e));
  napi_value code, message, err, num, sc;
  napi_create_string_utf8(env, errno_name(e), NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message);
  napi_create_error(env, code, message, &err);
  napi_create_int32(env, e, &num);
  napi_set_named_property(env, err, "errno", num);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sc);
  napi_set_named_property(env, err, "syscall", sc);
  napi_throw(env, err);
  return NULL;
}

NAPI_SYS_FN napi_value throw_type(napi_env env, const char *msg) {
  napi_throw_type_error(env, "ERR_INVALID_ARG", msg);
  return NULL;
}

NAPI_SYS_FN int get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv, size_t *argc_out) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return -1;
  for (size_t i = argc; i < want; i++) napi_get_undefined(env, &argv[i]);
  if (argc_out) *argc_out = argc;
  return 0;
}

NAPI_SYS_FN int arg_int64(napi_env env, napi_value v, int64_t *out) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_number) return napi_get_value_int64(env, v, out) == napi_ok ? 0 : -1;
  if (t == napi_bigint) {
    bool lossless;
    return napi_get_value_bigint_int64(env, v, out, &lossless) == napi_ok && lossless ? 0 : -1;
  }
  return -1;
}

NAPI_SYS_FN int arg_int(napi_env env, napi_value v, int *out) {
  int64_t x;
  if (arg_int64(env, v, &x) || x < INT32_MIN || x > INT32_MAX) return -1;
  *out = (int)x;
  return 0;
}

/* Copies a JS string into buf (NUL-terminated); fails if it does not fit. */
NAPI_SYS_FN int arg_string(napi_env env, napi_value v, char *buf, size_t cap) {
  size_t len;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok || len + 1 > cap) return -1;
  return napi_get_value_string_utf8(env, v, buf, cap, &len) == napi_ok ? 0 : -1;
}

NAPI_SYS_FN int arg_bytes(napi_env env, napi_value v, uint8_t **data, size_t *len) {
  bool is;
  napi_is_typedarray(env, v, &is);
  if (is) {
    napi_typedarray_type type;
    size_t length, byte_offset;
    napi_value ab;
    void *base;
    if (napi_get_typedarray_info(env, v, &type, &length, &base, &ab, &byte_offset) != napi_ok) return -1;
    if (type != napi_uint8_array && type != napi_uint8_clamped_array && type != napi_int8_array) return -1;
    *data = base;
    *len = length;
    return 0;
  }
  napi_is_buffer(env, v, &is);
  if (is) return napi_get_buffer_info(env, v, (void **)data, len) == napi_ok ? 0 : -1;
  return -1;
}

NAPI_SYS_FN napi_value make_int(napi_env env, int64_t x) {
  napi_value v;
  napi_create_int64(env, x, &v);
  return v;
}

NAPI_SYS_FN int set_flags(int fd, int nonblock) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return -1;
  fl = nonblock ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
  if (fcntl(fd, F_SETFL, fl) < 0) return -1;
  int fdfl = fcntl(fd, F_GETFD);
  if (fdfl < 0 || fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC) < 0) return -1;
  return 0;
}

NAPI_SYS_FN napi_value js_set_nonblocking(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  bool on = true;
  if (get_args(env, info, 2, argv, NULL) || arg_int(env, argv[0], &fd)) return throw_type(env, "setNonblocking: fd must be a number");
  napi_get_value_bool(env, argv[1], &on);
  if (set_flags(fd, on) < 0) return throw_errno(env, "fcntl", errno);
  return NULL;
}

/* ---------- memory ---------- */

/* An external ArrayBuffer does not own its mapping: munmap() is explicit, and the finalizer
 * unmaps only what is still mapped (tracked in the hint) so a forgotten region is not leaked. */
typedef struct {
  void *addr;
  size_t len;
} mapping_t;

NAPI_SYS_FN void mapping_finalize(napi_env env, void *data, void *hint) {
  mapping_t *m = hint;
  if (m->addr) munmap(m->addr, m->len);
  free(m);
}

/* Node 20 cannot wrap more than 4 GiB in one ArrayBuffer, and when the wrapping fails it may
 * already have run the finalizer: refuse such lengths up front (callers map in chunks). */
#define MAX_MAPPING_BYTES (((size_t)1) << 32)

NAPI_SYS_FN napi_value wrap_mapping(napi_env env, void *addr, size_t len) {
  if (len > MAX_MAPPING_BYTES) {
    munmap(addr, len);
    return throw_errno(env, "mmap", EFBIG);
  }
  mapping_t *m = malloc(sizeof *m);
  if (!m) {
    munmap(addr, len);
    return throw_errno(env, "malloc", ENOMEM);
  }
  m->addr = addr;
  m->len = len;
  napi_value ab;
  if (napi_create_external_arraybuffer(env, addr, len, mapping_finalize, m, &ab) != napi_ok) {
    munmap(addr, len);
    free(m);
    napi_throw_error(env, "EINTERNAL", "cannot create external ArrayBuffer");
    return NULL;
  }
  /* Remember the bookkeeping so munmap() can find it again. */
  napi_wrap(env, ab, m, NULL, NULL, NULL);
  return ab;
}

NAPI_SYS_FN int get_mapping(napi_env env, napi_value ab, mapping_t **m) {
  bool is;
  napi_is_arraybuffer(env, ab, &is);
  if (!is) return -1;
  if (napi_unwrap(env, ab, (void **)m) != napi_ok || !*m || !(*m)->addr) return -1;
  return 0;
}

NAPI_SYS_FN napi_value js_mmap(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  int fd, prot, flags;
  int64_t off, len;
  if (get_args(env, info, 5, argv, NULL) || arg_int(env, argv[0], &fd) || arg_int64(env, argv[1], &off) ||
      arg_int64(env, argv[2], &len) || arg_int(env, argv[3], &prot) || arg_int(env, argv[4], &flags))
    return throw_type(env, "mmap(fd, offset, length, prot, flags): numbers expected");
  if (len <= 0 || off < 0) return throw_errno(env, "mmap", EINVAL);
  if (flags & MAP_FIXED) return throw_type(env, "mmap: use mapFixed for MAP_FIXED");
  void *p = mmap(NULL, (size_t)len, prot, flags, fd, (off_t)off);
  if (p == MAP_FAILED) return throw_errno(env, "mmap", errno);
  return wrap_mapping(env, p, (size_t)len);
}

NAPI_SYS_FN napi_value js_reserve(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int64_t len;
  if (get_args(env, info, 1, argv, NULL) || arg_int64(env, argv[0], &len) || len <= 0)
    return throw_type(env, "reserve(length): positive number expected");
  void *p = mmap(NULL, (size_t)len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return throw_errno(env, "mmap", errno);
  return wrap_mapping(env, p, (size_t)len);
}

NAPI_SYS_FN napi_value js_munmap(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  mapping_t *m;
  if (get_args(env, info, 1, argv, NULL) || get_mapping(env, argv[0], &m)) return throw_type(env, "munmap: not a live mapping");
  /* Detach first so no JS view can reach the memory once it is gone. */
  napi_detach_arraybuffer(env, argv[0]);
  munmap(m->addr, m->len);
  m->addr = NULL;
  return NULL;
}

/* A page-aligned, non-empty range inside a live mapping; otherwise throws (TypeError for a bad
   region argument, EINVAL for a bad range, named after `what`) and returns -1. */
NAPI_SYS_FN int region_range(napi_env env, const char *what, napi_value ab, napi_value voff, napi_value vlen, mapping_t **m, int64_t *off, int64_t *len) {
  if (get_mapping(env, ab, m) || arg_int64(env, voff, off) || arg_int64(env, vlen, len)) {
    char msg[128];
    snprintf(msg, sizeof msg, "%s: region must be a live mapping", what);
    throw_type(env, msg);
    return -1;
  }
  long page = sysconf(_SC_PAGESIZE);
  if (*off < 0 || *len <= 0 || (uint64_t)*off > (*m)->len || (uint64_t)*len > (*m)->len - (uint64_t)*off || *off % page) {
    throw_errno(env, what, EINVAL);
    return -1;
  }
  return 0;
}

NAPI_SYS_FN napi_value js_map_fixed(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  mapping_t *m;
  int64_t off, len, fdoff;
  int fd, prot;
  if (get_args(env, info, 6, argv, NULL) || arg_int(env, argv[2], &fd) || arg_int64(env, argv[3], &fdoff) || arg_int(env, argv[5], &prot))
    return throw_type(env, "mapFixed(region, regionOffset, fd, fdOffset, length, prot)");
  if (region_range(env, "mapFixed", argv[0], argv[1], argv[4], &m, &off, &len)) return NULL;
  if (fdoff < 0) return throw_errno(env, "mapFixed", EINVAL);
  void *p = mmap((char *)m->addr + off, (size_t)len, prot, MAP_SHARED | MAP_FIXED, fd, (off_t)fdoff);
  if (p == MAP_FAILED) return throw_errno(env, "mmap", errno);
  return NULL;
}

NAPI_SYS_FN napi_value js_unmap_fixed(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  mapping_t *m;
  int64_t off, len;
  if (get_args(env, info, 3, argv, NULL)) return NULL;
  if (region_range(env, "unmapFixed", argv[0], argv[1], argv[2], &m, &off, &len)) return NULL;
  void *p = mmap((char *)m->addr + off, (size_t)len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
  if (p == MAP_FAILED) return throw_errno(env, "mmap", errno);
  return NULL;
}

NAPI_SYS_FN napi_value js_memfd_create(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  char name[250];
  int flags;
  if (get_args(env, info, 2, argv, NULL) || arg_string(env, argv[0], name, sizeof name) || arg_int(env, argv[1], &flags))
    return throw_type(env, "memfdCreate(name, flags)");
  int fd = memfd_create(name, (unsigned)flags);
  if (fd < 0) return throw_errno(env, "memfd_create", errno);
  return make_int(env, fd);
}

NAPI_SYS_FN napi_value js_ftruncate(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  int64_t len;
  if (get_args(env, info, 2, argv, NULL) || arg_int(env, argv[0], &fd) || arg_int64(env, argv[1], &len)) return throw_type(env, "ftruncate(fd, length)");
  if (ftruncate(fd, (off_t)len) < 0) return throw_errno(env, "ftruncate", errno);
  return NULL;
}

/* ---------- fd readiness on the libuv loop ---------- */

typedef struct {
  uv_poll_t poll;
  napi_env env;
  napi_ref callback;
  napi_ref self;
  /* One async context for the watch's life (with the watch object as its resource): creating and
     destroying one per event (an object, a string, init and destroy hooks) cost more than the
     rest of a wake-up's native work. */
  napi_async_context actx;
  int in_callback;
  int closed;
} fd_watch_t;

NAPI_SYS_FN void watch_release_context(fd_watch_t *w) {
  if (w->actx) {
    napi_async_destroy(w->env, w->actx);
    w->actx = NULL;
  }
}

NAPI_SYS_FN void watch_on_event(uv_poll_t *handle, int status, int events) {
  fd_watch_t *w = handle->data;
  if (w->closed) return;
  napi_env env = w->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value cb, global, argv[2];
  napi_get_reference_value(env, w->callback, &cb);
  napi_get_global(env, &global);
  int ev = 0;
  if (events & UV_READABLE) ev |= 1;
  if (events & UV_WRITABLE) ev |= 2;
  if (events & UV_DISCONNECT) ev |= 4;
  argv[0] = make_int(env, ev);
  argv[1] = make_int(env, status < 0 ? -status : 0);
  /* make_callback runs microtasks and reports exceptions through Node's usual path. */
  napi_value result;
  w->in_callback = 1;
  napi_status st = napi_make_callback(env, w->actx, global, cb, 2, argv, &result);
  w->in_callback = 0;
  /* close() from inside the callback left the context for us to release. */
  if (w->closed) watch_release_context(w);
  if (st == napi_pending_exception) {
    napi_value exc;
    napi_get_and_clear_last_exception(env, &exc);
    napi_fatal_exception(env, exc);
  }
  napi_close_handle_scope(env, scope);
}

NAPI_SYS_FN void watch_on_close(uv_handle_t *handle) {
  fd_watch_t *w = handle->data;
  free(w);
}

NAPI_SYS_FN fd_watch_t *watch_from_this(napi_env env, napi_callback_info info, napi_value *argv, size_t n) {
  napi_value self;
  size_t argc = n;
  if (napi_get_cb_info(env, info, &argc, argv, &self, NULL) != napi_ok) return NULL;
  fd_watch_t *w = NULL;
  if (napi_unwrap(env, self, (void **)&w) != napi_ok) return NULL;
  return w;
}

NAPI_SYS_FN int uv_events(int ev) {
  int e = 0;
  if (ev & 1) e |= UV_READABLE;
  if (ev & 2) e |= UV_WRITABLE;
  if (ev & 4) e |= UV_DISCONNECT;
  return e;
}

NAPI_SYS_FN napi_value js_watch_start(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  fd_watch_t *w = watch_from_this(env, info, argv, 1);
  int ev;
  if (!w || w->closed) return throw_type(env, "FdWatch: closed");
  if (arg_int(env, argv[0], &ev)) return throw_type(env, "FdWatch.start(events)");
  int r = uv_poll_start(&w->poll, uv_events(ev), watch_on_event);
  if (r < 0) return throw_errno(env, "uv_poll_start", -r);
  return NULL;
}

NAPI_SYS_FN napi_value js_watch_stop(napi_env env, napi_callback_info info) {
  fd_watch_t *w = watch_from_this(env, info, NULL, 0);
  if (w && !w->closed) uv_poll_stop(&w->poll);
  return NULL;
}

NAPI_SYS_FN napi_value js_watch_close(napi_env env, napi_callback_info info) {
  fd_watch_t *w = watch_from_this(env, info, NULL, 0);
  if (!w || w->closed) return NULL;
  w->closed = 1;
  uv_poll_stop(&w->poll);
  if (!w->in_callback) watch_release_context(w);
  napi_delete_reference(env, w->callback);
  napi_delete_reference(env, w->self);
  uv_close((uv_handle_t *)&w->poll, watch_on_close);
  return NULL;
}

NAPI_SYS_FN napi_value js_watch(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd, ev;
  if (get_args(env, info, 3, argv, NULL) || arg_int(env, argv[0], &fd) || arg_int(env, argv[1], &ev)) return throw_type(env, "watch(fd, events, cb)");
  napi_valuetype t;
  napi_typeof(env, argv[2], &t);
  if (t != napi_function) return throw_type(env, "watch: callback must be a function");
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return throw_type(env, "watch: no event loop");
  fd_watch_t *w = calloc(1, sizeof *w);
  if (!w) return throw_errno(env, "calloc", ENOMEM);
  int r = uv_poll_init(loop, &w->poll, fd);
  if (r < 0) {
    free(w);
    return throw_errno(env, "uv_poll_init", -r);
  }
  w->poll.data = w;
  w->env = env;
  napi_value obj, fn;
  napi_create_object(env, &obj);
  napi_create_function(env, "start", NAPI_AUTO_LENGTH, js_watch_start, NULL, &fn);
  napi_set_named_property(env, obj, "start", fn);
  napi_create_function(env, "stop", NAPI_AUTO_LENGTH, js_watch_stop, NULL, &fn);
  napi_set_named_property(env, obj, "stop", fn);
  napi_create_function(env, "close", NAPI_AUTO_LENGTH, js_watch_close, NULL, &fn);
  napi_set_named_property(env, obj, "close", fn);
  napi_wrap(env, obj, w, NULL, NULL, NULL);
  napi_create_reference(env, argv[2], 1, &w->callback);
  /* The watch keeps its JS object alive until close(), so `this` stays valid in callbacks. */
  napi_create_reference(env, obj, 1, &w->self);
  napi_value ctx_name;
  napi_create_string_utf8(env, "vhost-user-ts:fdwatch", NAPI_AUTO_LENGTH, &ctx_name);
  if (napi_async_init(env, obj, ctx_name, &w->actx) != napi_ok) w->actx = NULL;
  if (ev) {
    r = uv_poll_start(&w->poll, uv_events(ev), watch_on_event);
    if (r < 0) return throw_errno(env, "uv_poll_start", -r);
  }
  return obj;
}

/* ---------- module ---------- */

NAPI_SYS_FN void set_fn(napi_env env, napi_value exports, const char *name, napi_callback cb) {
  napi_value fn;
  napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, NULL, &fn);
  napi_set_named_property(env, exports, name, fn);
}

NAPI_SYS_FN void set_const(napi_env env, napi_value obj, const char *name, int64_t v) {
  napi_set_named_property(env, obj, name, make_int(env, v));
}

/* What every module built on these helpers exports: mappings, memfds, non-blocking fds and fd
 * watches, their constants and the page size. Returns the constants object for more. */
NAPI_SYS_FN napi_value export_common(napi_env env, napi_value exports) {
  set_fn(env, exports, "mmap", js_mmap);
  set_fn(env, exports, "munmap", js_munmap);
  set_fn(env, exports, "memfdCreate", js_memfd_create);
  set_fn(env, exports, "ftruncate", js_ftruncate);
  set_fn(env, exports, "setNonblocking", js_set_nonblocking);
  set_fn(env, exports, "watch", js_watch);
  napi_value c;
  napi_create_object(env, &c);
  set_const(env, c, "PROT_NONE", PROT_NONE);
  set_const(env, c, "PROT_READ", PROT_READ);
  set_const(env, c, "PROT_WRITE", PROT_WRITE);
  set_const(env, c, "MAP_SHARED", MAP_SHARED);
  set_const(env, c, "MAP_PRIVATE", MAP_PRIVATE);
  set_const(env, c, "MFD_CLOEXEC", MFD_CLOEXEC);
  set_const(env, c, "MFD_ALLOW_SEALING", MFD_ALLOW_SEALING);
  set_const(env, c, "READABLE", 1);
  set_const(env, c, "WRITABLE", 2);
  set_const(env, c, "DISCONNECT", 4);
  napi_set_named_property(env, exports, "constants", c);
  set_const(env, exports, "pageSize", sysconf(_SC_PAGESIZE));
  return c;
}

#endif
