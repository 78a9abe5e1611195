/*
 * erofs-vfsd native shim: the syscalls the daemon itself uses that Node does not expose — image
 * mappings (mmap, madvise), memfds for shared backings, a bulk copy for READ data (see
 * copy_bytes), mount/umount2 and fd readiness for the host FUSE mount. The argument/errno
 * helpers, mappings and fd watches are vhost-user-ts's (napi_sys.h). No protocol logic here;
 * vhost-user's own syscalls (sockets, eventfds) are in vhost-user-ts's addon.
 */
#include <sys/mount.h>

#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include "napi_sys.h"

static napi_value js_madvise(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  mapping_t *m;
  int64_t off, len;
  int advice;
  if (get_args(env, info, 4, argv, NULL) || arg_int(env, argv[3], &advice)) return throw_type(env, "madvise(region, offset, length, advice)");
  if (region_range(env, "madvise", argv[0], argv[1], argv[2], &m, &off, &len)) return NULL;
  if (madvise((char *)m->addr + off, (size_t)len, advice) < 0) return throw_errno(env, "madvise", errno);
  return NULL;
}

/* ---------- bulk copy ----------
 * READ data goes from the image mapping into guest memory. For copies larger than its L2 size
 * glibc's memcpy on AMD leaves `rep movsb` for a vector loop; here `rep movsb` copied 1 MiB in
 * 28-63 us against 40-63 for memcpy, and cut the daemon's CPU per 1 MiB READ from ~70 to ~59 us
 * (docs/benchmarks.md). Used only when the CPU advertises ERMS (fast string moves). */
#if defined(__x86_64__)
static int have_erms = -1;

static int cpu_has_erms(void) {
  if (have_erms < 0) {
    unsigned a, b, c, d;
    have_erms = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & (1u << 9)) ? 1 : 0;
  }
  return have_erms;
}
#endif

static void copy_bytes(uint8_t *dst, const uint8_t *src, size_t n) {
#if defined(__x86_64__)
  if (cpu_has_erms()) {
    __asm__ volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
    return;
  }
#endif
  memcpy(dst, src, n);
}

/* copy(dst, dstOffset, src, srcOffset, length): like Buffer.copy, bounds-checked here; ranges
 * that overlap are moved with memmove. */
static napi_value js_copy(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  uint8_t *dst, *src;
  size_t dlen, slen;
  int64_t doff, soff, len;
  if (get_args(env, info, 5, argv, NULL) || arg_bytes(env, argv[0], &dst, &dlen) || arg_int64(env, argv[1], &doff) ||
      arg_bytes(env, argv[2], &src, &slen) || arg_int64(env, argv[3], &soff) || arg_int64(env, argv[4], &len))
    return throw_type(env, "copy(dst, dstOffset, src, srcOffset, length): byte arrays and numbers expected");
  if (doff < 0 || soff < 0 || len < 0 || (uint64_t)doff > dlen || (uint64_t)len > dlen - (uint64_t)doff ||
      (uint64_t)soff > slen || (uint64_t)len > slen - (uint64_t)soff)
    return throw_errno(env, "copy", ERANGE);
  uint8_t *d = dst + doff;
  const uint8_t *s = src + soff;
  if (len == 0) return NULL;
  if (d < s + len && s < d + len) memmove(d, s, (size_t)len);
  else copy_bytes(d, s, (size_t)len);
  return NULL;
}

/* ---------- mounts ---------- */

static napi_value js_mount(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  char src[4096], target[4096], fstype[256], data[4096];
  int64_t flags;
  if (get_args(env, info, 5, argv, NULL) || arg_string(env, argv[0], src, sizeof src) || arg_string(env, argv[1], target, sizeof target) ||
      arg_string(env, argv[2], fstype, sizeof fstype) || arg_int64(env, argv[3], &flags) || arg_string(env, argv[4], data, sizeof data))
    return throw_type(env, "mount(source, target, fstype, flags, data)");
  if (mount(src, target, fstype, (unsigned long)flags, data) < 0) return throw_errno(env, "mount", errno);
  return NULL;
}

static napi_value js_umount2(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  char target[4096];
  int flags;
  if (get_args(env, info, 2, argv, NULL) || arg_string(env, argv[0], target, sizeof target) || arg_int(env, argv[1], &flags))
    return throw_type(env, "umount2(target, flags)");
  if (umount2(target, flags) < 0) return throw_errno(env, "umount2", errno);
  return NULL;
}

NAPI_MODULE_INIT() {
  napi_value c = export_common(env, exports);
  set_fn(env, exports, "madvise", js_madvise);
  set_fn(env, exports, "copy", js_copy);
  set_fn(env, exports, "mount", js_mount);
  set_fn(env, exports, "umount2", js_umount2);
  set_const(env, c, "MS_RDONLY", MS_RDONLY);
  set_const(env, c, "MS_NOSUID", MS_NOSUID);
  set_const(env, c, "MS_NODEV", MS_NODEV);
  set_const(env, c, "MS_NOEXEC", MS_NOEXEC);
  set_const(env, c, "MNT_DETACH", MNT_DETACH);
  set_const(env, c, "MNT_FORCE", MNT_FORCE);
  set_const(env, c, "MADV_DONTNEED", MADV_DONTNEED);
  set_const(env, c, "MADV_WILLNEED", MADV_WILLNEED);
  set_const(env, c, "MADV_REMOVE", MADV_REMOVE);
  return exports;
}
