/*
 * vhost-user-ts syscall addon: what a vhost-user back-end needs that Node does not expose —
 * Unix sockets with SCM_RIGHTS fd passing, mmap of guest memory (and fixed mappings into a
 * reserved window, memfds: what a front-end or a test uses), eventfds, fd readiness on the libuv
 * loop. No protocol logic lives here.
 */
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "napi_sys.h"

/* ---------- Unix sockets ---------- */

static int fill_sockaddr(napi_env env, napi_value v, struct sockaddr_un *sa) {
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  return arg_string(env, v, sa->sun_path, sizeof sa->sun_path);
}

static napi_value js_unix_listen(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (get_args(env, info, 2, argv, NULL)) return NULL;
  struct sockaddr_un sa;
  if (fill_sockaddr(env, argv[0], &sa)) return throw_type(env, "unixListen: path must be a string shorter than 108 bytes");
  int backlog = 16;
  napi_valuetype t;
  napi_typeof(env, argv[1], &t);
  if (t != napi_undefined && arg_int(env, argv[1], &backlog)) return throw_type(env, "unixListen: backlog must be a number");
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  /* A socket file left by an earlier run would make bind fail with EADDRINUSE. */
  struct stat st;
  if (lstat(sa.sun_path, &st) == 0 && S_ISSOCK(st.st_mode)) unlink(sa.sun_path);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, backlog) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, "bind/listen", e);
  }
  return make_int(env, fd);
}

static napi_value js_unix_connect(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (get_args(env, info, 1, argv, NULL)) return NULL;
  struct sockaddr_un sa;
  if (fill_sockaddr(env, argv[0], &sa)) return throw_type(env, "unixConnect: path must be a string shorter than 108 bytes");
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || set_flags(fd, 1) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, "connect", e);
  }
  return make_int(env, fd);
}

static napi_value js_accept(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int lfd;
  if (get_args(env, info, 1, argv, NULL) || arg_int(env, argv[0], &lfd)) return throw_type(env, "accept: fd must be a number");
  int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return make_int(env, -1);
    return throw_errno(env, "accept4", errno);
  }
  return make_int(env, fd);
}

static napi_value js_socketpair(napi_env env, napi_callback_info info) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) return throw_errno(env, "socketpair", errno);
  napi_value arr;
  napi_create_array_with_length(env, 2, &arr);
  napi_set_element(env, arr, 0, make_int(env, sv[0]));
  napi_set_element(env, arr, 1, make_int(env, sv[1]));
  return arr;
}

static napi_value js_sendmsg(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd;
  uint8_t *data;
  size_t len;
  if (get_args(env, info, 3, argv, NULL) || arg_int(env, argv[0], &fd)) return throw_type(env, "sendmsg: fd must be a number");
  if (arg_bytes(env, argv[1], &data, &len)) return throw_type(env, "sendmsg: data must be a Uint8Array");
  int fds[MAX_FDS];
  uint32_t nfds = 0;
  napi_valuetype t;
  napi_typeof(env, argv[2], &t);
  if (t != napi_undefined && t != napi_null) {
    bool is_arr;
    napi_is_array(env, argv[2], &is_arr);
    if (!is_arr) return throw_type(env, "sendmsg: fds must be an array");
    napi_get_array_length(env, argv[2], &nfds);
    if (nfds > MAX_FDS) return throw_type(env, "sendmsg: at most 8 fds per message");
    for (uint32_t i = 0; i < nfds; i++) {
      napi_value e;
      napi_get_element(env, argv[2], i, &e);
      if (arg_int(env, e, &fds[i])) return throw_type(env, "sendmsg: fds must be numbers");
    }
  }
  struct iovec iov = {.iov_base = data, .iov_len = len};
  union {
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    struct cmsghdr align;
  } ctl;
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  if (nfds > 0) {
    memset(&ctl, 0, sizeof ctl);
    msg.msg_control = ctl.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  ssize_t n;
  do n = sendmsg(fd, &msg, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0) return throw_errno(env, "sendmsg", errno);
  return make_int(env, n);
}

static napi_value js_recvmsg(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd;
  uint8_t *data;
  size_t len;
  if (get_args(env, info, 3, argv, NULL) || arg_int(env, argv[0], &fd)) return throw_type(env, "recvmsg: fd must be a number");
  if (arg_bytes(env, argv[1], &data, &len)) return throw_type(env, "recvmsg: buf must be a Uint8Array");
  struct iovec iov = {.iov_base = data, .iov_len = len};
  union {
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    struct cmsghdr align;
  } ctl;
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
  ssize_t n;
  do n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  napi_value result, fdarr;
  napi_create_object(env, &result);
  napi_create_array(env, &fdarr);
  if (n < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK) return throw_errno(env, "recvmsg", errno);
    napi_set_named_property(env, result, "bytes", make_int(env, -1));
    napi_set_named_property(env, result, "fds", fdarr);
    return result;
  }
  uint32_t k = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    int *p = (int *)CMSG_DATA(c);
    for (size_t i = 0; i < count; i++) napi_set_element(env, fdarr, k++, make_int(env, p[i]));
  }
  napi_value truncated;
  napi_get_boolean(env, (msg.msg_flags & MSG_CTRUNC) != 0, &truncated);
  napi_set_named_property(env, result, "bytes", make_int(env, n));
  napi_set_named_property(env, result, "fds", fdarr);
  napi_set_named_property(env, result, "fdsTruncated", truncated);
  return result;
}

static napi_value js_eventfd(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int initval, flags;
  if (get_args(env, info, 2, argv, NULL) || arg_int(env, argv[0], &initval) || arg_int(env, argv[1], &flags)) return throw_type(env, "eventfd(initval, flags)");
  int fd = eventfd((unsigned)initval, flags);
  if (fd < 0) return throw_errno(env, "eventfd", errno);
  return make_int(env, fd);
}

static napi_value js_eventfd_write(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  int64_t val;
  if (get_args(env, info, 2, argv, NULL) || arg_int(env, argv[0], &fd) || arg_int64(env, argv[1], &val)) return throw_type(env, "eventfdWrite(fd, value)");
  uint64_t v = (uint64_t)val;
  ssize_t n;
  do n = write(fd, &v, sizeof v);
  while (n < 0 && errno == EINTR);
  napi_value r;
  if (n < 0) {
    if (errno != EAGAIN) return throw_errno(env, "write", errno);
    napi_get_boolean(env, false, &r);
  } else {
    napi_get_boolean(env, true, &r);
  }
  return r;
}

static napi_value js_eventfd_read(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (get_args(env, info, 1, argv, NULL) || arg_int(env, argv[0], &fd)) return throw_type(env, "eventfdRead(fd)");
  uint64_t v;
  ssize_t n;
  do n = read(fd, &v, sizeof v);
  while (n < 0 && errno == EINTR);
  napi_value r;
  if (n < 0) {
    if (errno != EAGAIN) return throw_errno(env, "read", errno);
    napi_get_null(env, &r);
    return r;
  }
  napi_create_bigint_uint64(env, v, &r);
  return r;
}

NAPI_MODULE_INIT() {
  napi_value c = export_common(env, exports);
  set_fn(env, exports, "unixListen", js_unix_listen);
  set_fn(env, exports, "unixConnect", js_unix_connect);
  set_fn(env, exports, "accept", js_accept);
  set_fn(env, exports, "socketpair", js_socketpair);
  set_fn(env, exports, "sendmsg", js_sendmsg);
  set_fn(env, exports, "recvmsg", js_recvmsg);
  set_fn(env, exports, "reserve", js_reserve);
  set_fn(env, exports, "mapFixed", js_map_fixed);
  set_fn(env, exports, "unmapFixed", js_unmap_fixed);
  set_fn(env, exports, "eventfd", js_eventfd);
  set_fn(env, exports, "eventfdWrite", js_eventfd_write);
  set_fn(env, exports, "eventfdRead", js_eventfd_read);
  set_const(env, c, "EFD_NONBLOCK", EFD_NONBLOCK);
  set_const(env, c, "EFD_CLOEXEC", EFD_CLOEXEC);
  set_const(env, c, "EFD_SEMAPHORE", EFD_SEMAPHORE);
  return exports;
}
