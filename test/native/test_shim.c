/*
 * Syscalls only the tests use: mincore (page-cache residency for the memory probes) and the
 * address of a mapping (what a test front-end sends as a region's user address). They work on
 * any ArrayBuffer that wraps a mapping, whichever addon made it.
 */
#include "napi_sys.h"

/* The memory of a non-detached ArrayBuffer; throws a TypeError otherwise. */
static int arraybuffer_memory(napi_env env, napi_value v, const char *what, uint8_t **data, size_t *len) {
  bool is;
  napi_is_arraybuffer(env, v, &is);
  if (!is || napi_get_arraybuffer_info(env, v, (void **)data, len) != napi_ok || !*data) {
    char msg[128];
    snprintf(msg, sizeof msg, "%s: a live mapping (ArrayBuffer) expected", what);
    throw_type(env, msg);
    return -1;
  }
  return 0;
}

/* mincore(region, offset, length) -> Uint8Array, one byte per page (bit 0: resident). For a file
 * mapping this is the file's page-cache residency (what util-linux fincore counts), page by page,
 * without faulting anything in: memory probes attribute resident pages to what they hold. */
static napi_value js_mincore(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  uint8_t *base;
  size_t size;
  int64_t off, len;
  if (get_args(env, info, 3, argv, NULL) || arraybuffer_memory(env, argv[0], "mincore", &base, &size)) return NULL;
  if (arg_int64(env, argv[1], &off) || arg_int64(env, argv[2], &len)) return throw_type(env, "mincore(region, offset, length)");
  long page = sysconf(_SC_PAGESIZE);
  if (off < 0 || len <= 0 || (uint64_t)off > size || (uint64_t)len > size - (uint64_t)off || ((uintptr_t)base + (uint64_t)off) % (uint64_t)page)
    return throw_errno(env, "mincore", EINVAL);
  size_t pages = ((size_t)len + (size_t)page - 1) / (size_t)page;
  void *data;
  napi_value ab, out;
  if (napi_create_arraybuffer(env, pages, &data, &ab) != napi_ok) return throw_errno(env, "mincore", ENOMEM);
  if (mincore(base + off, (size_t)len, (unsigned char *)data) < 0) return throw_errno(env, "mincore", errno);
  napi_create_typedarray(env, napi_uint8_array, pages, ab, 0, &out);
  return out;
}

static napi_value js_address_of(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  uint8_t *base;
  size_t size;
  if (get_args(env, info, 1, argv, NULL) || arraybuffer_memory(env, argv[0], "addressOf", &base, &size)) return NULL;
  napi_value v;
  napi_create_bigint_uint64(env, (uint64_t)(uintptr_t)base, &v);
  return v;
}

NAPI_MODULE_INIT() {
  set_fn(env, exports, "mincore", js_mincore);
  set_fn(env, exports, "addressOf", js_address_of);
  return exports;
}
