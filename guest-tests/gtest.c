/*
 * gtest: the in-guest test helper (compiled with `gcc -static` when the initramfs is built; it
 * also runs on the host to produce the expected manifest of a source tree).
 *
 *   gtest manifest ROOT OUT          walk ROOT (lstat, readlink, listxattr/getxattr, SHA-256 of
 *                                    every regular file) and write a manifest JSON to OUT in the
 *                                    format of ../shared/images/ *.expected.json; prints a summary
 *   gtest readdir DIR                getdents64 over DIR with a small and a large buffer plus a
 *                                    rewind and a seek back to a saved d_off; prints count + hash
 *   gtest mmap FILE                  SHA-256 through mmap, whole file and from a mid-file offset,
 *                                    checks the bytes past EOF in the last page are zero
 *   gtest odirect FILE               SHA-256 through O_DIRECT reads (aligned buffers), compared
 *                                    with buffered reads
 *   gtest parallel N FILE...         N processes read all FILEs at once in different orders and
 *                                    chunk sizes; every reader must agree
 *   gtest sha FILE                   SHA-256 through read(2)
 *   gtest xattr PATH                 listxattr/getxattr with size probes; a missing name must
 *                                    give ENODATA
 *   gtest hardlink A B               A and B are one inode (same st_ino/st_dev, nlink 2)
 *   gtest rofs DIR                   every modification of DIR and DIR/file fails with EROFS and
 *                                    changes nothing (read-only exports only: on a writable
 *                                    export this test really tries to modify DIR)
 *
 * Timing commands for the benchmark (bench/guest.ts): they measure, they check only that every
 * byte and entry was there (no hashing: under TCG a SHA-256 of the data would cost more guest
 * CPU than the I/O being measured). TEST names the result line.
 *   gtest readtime TEST FILE [LEN]   open + read(2) in 1 MiB chunks up to LEN (default: all)
 *   gtest partime TEST N FILE        N processes each pread(2) one Nth of FILE in 1 MiB chunks
 *   gtest walktime TEST read|stat DIR   recursive readdir + lstat of every entry (what `find -ls`
 *                                    asks of the file system); `read` also reads every regular file
 *
 * Each command except `manifest` prints exactly one JSON object on stdout (the init script
 * prefixes `GUESTTEST `). Exit status 0 = the test's own checks passed.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

/* ---------- SHA-256 (FIPS 180-4) ---------- */
typedef struct { uint32_t h[8]; uint64_t len; uint8_t buf[64]; size_t n; } sha256_ctx;
static const uint32_t K[64] = {
  0x428a2f98,0x71374491,0xb5c0fbcf,0xe9b5dba5,0x3956c25b,0x59f111f1,0x923f82a4,0xab1c5ed5,
  0xd807aa98,0x12835b01,0x243185be,0x550c7dc3,0x72be5d74,0x80deb1fe,0x9bdc06a7,0xc19bf174,
  0xe49b69c1,0xefbe4786,0x0fc19dc6,0x240ca1cc,0x2de92c6f,0x4a7484aa,0x5cb0a9dc,0x76f988da,
  0x983e5152,0xa831c66d,0xb00327c8,0xbf597fc7,0xc6e00bf3,0xd5a79147,0x06ca6351,0x14292967,
  0x27b70a85,0x2e1b2138,0x4d2c6dfc,0x53380d13,0x650a7354,0x766a0abb,0x81c2c92e,0x92722c85,
  0xa2bfe8a1,0xa81a664b,0xc24b8b70,0xc76c51a3,0xd192e819,0xd6990624,0xf40e3585,0x106aa070,
  0x19a4c116,0x1e376c08,0x2748774c,0x34b0bcb5,0x391c0cb3,0x4ed8aa4a,0x5b9cca4f,0x682e6ff3,
  0x748f82ee,0x78a5636f,0x84c87814,0x8cc70208,0x90befffa,0xa4506ceb,0xbef9a3f7,0xc67178f2};
#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
static void sha_block(sha256_ctx *c, const uint8_t *p) {
  uint32_t w[64], a, b, d, e, f, g, h, cc, t1, t2;
  for (int i = 0; i < 16; i++) w[i] = (uint32_t)p[4*i] << 24 | (uint32_t)p[4*i+1] << 16 | (uint32_t)p[4*i+2] << 8 | p[4*i+3];
  for (int i = 16; i < 64; i++) {
    uint32_t s0 = ROR(w[i-15], 7) ^ ROR(w[i-15], 18) ^ (w[i-15] >> 3);
    uint32_t s1 = ROR(w[i-2], 17) ^ ROR(w[i-2], 19) ^ (w[i-2] >> 10);
    w[i] = w[i-16] + s0 + w[i-7] + s1;
  }
  a = c->h[0]; b = c->h[1]; cc = c->h[2]; d = c->h[3]; e = c->h[4]; f = c->h[5]; g = c->h[6]; h = c->h[7];
  for (int i = 0; i < 64; i++) {
    t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
    t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & cc) ^ (b & cc));
    h = g; g = f; f = e; e = d + t1; d = cc; cc = b; b = a; a = t1 + t2;
  }
  c->h[0] += a; c->h[1] += b; c->h[2] += cc; c->h[3] += d; c->h[4] += e; c->h[5] += f; c->h[6] += g; c->h[7] += h;
}
static void sha_init(sha256_ctx *c) {
  static const uint32_t iv[8] = {0x6a09e667,0xbb67ae85,0x3c6ef372,0xa54ff53a,0x510e527f,0x9b05688c,0x1f83d9ab,0x5be0cd19};
  memcpy(c->h, iv, sizeof iv); c->len = 0; c->n = 0;
}
static void sha_update(sha256_ctx *c, const void *data, size_t len) {
  const uint8_t *p = data;
  c->len += len;
  if (c->n) {
    size_t k = 64 - c->n < len ? 64 - c->n : len;
    memcpy(c->buf + c->n, p, k); c->n += k; p += k; len -= k;
    if (c->n == 64) { sha_block(c, c->buf); c->n = 0; }
  }
  while (len >= 64) { sha_block(c, p); p += 64; len -= 64; }
  if (len) { memcpy(c->buf, p, len); c->n = len; }
}
static void sha_final(sha256_ctx *c, char hex[65]) {
  uint64_t bits = c->len * 8;
  uint8_t pad = 0x80, z = 0, lenb[8];
  sha_update(c, &pad, 1);
  while (c->n != 56) sha_update(c, &z, 1);
  for (int i = 0; i < 8; i++) lenb[i] = (uint8_t)(bits >> (56 - 8 * i));
  sha_update(c, lenb, 8);
  for (int i = 0; i < 8; i++) sprintf(hex + 8 * i, "%08x", c->h[i]);
  hex[64] = 0;
}

/* ---------- small utilities ---------- */
static double now_ms(void) {
  struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}
static void json_str(FILE *f, const char *s, size_t n) {
  fputc('"', f);
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '"' || ch == '\\') { fputc('\\', f); fputc(ch, f); }
    else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
    else fputc(ch, f);
  }
  fputc('"', f);
}
static void json_cstr(FILE *f, const char *s) { json_str(f, s, strlen(s)); }

/* read(2) the whole file into a SHA-256; returns bytes read or -errno */
static long long sha_fd(int fd, char hex[65], size_t chunk) {
  static char *buf; static size_t bufsz;
  if (bufsz < chunk) { free(buf); buf = malloc(chunk); bufsz = chunk; }
  sha256_ctx c; sha_init(&c);
  long long total = 0;
  for (;;) {
    ssize_t r = read(fd, buf, chunk);
    if (r < 0) { if (errno == EINTR) continue; return -errno; }
    if (r == 0) break;
    sha_update(&c, buf, (size_t)r); total += r;
  }
  sha_final(&c, hex);
  return total;
}
static long long sha_path(const char *path, char hex[65]) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  long long r = sha_fd(fd, hex, 1 << 17);
  close(fd);
  return r;
}

/* ---------- manifest ---------- */
static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
static int cmp_bytes(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}
static long n_entries, n_errors;
static unsigned long long n_bytes;
static int first_entry = 1;

static const char *type_of(mode_t m) {
  return S_ISREG(m) ? "file" : S_ISDIR(m) ? "dir" : S_ISLNK(m) ? "symlink" : S_ISCHR(m) ? "chardev"
       : S_ISBLK(m) ? "blockdev" : S_ISFIFO(m) ? "fifo" : "socket";
}

static void emit_xattrs(FILE *out, const char *full) {
  ssize_t n = llistxattr(full, NULL, 0);
  if (n <= 0) { if (n < 0 && errno != ENOTSUP) n_errors++; return; }
  char *names = malloc((size_t)n + 1);
  n = llistxattr(full, names, (size_t)n);
  if (n <= 0) { free(names); return; }
  char *v[4096]; int cnt = 0;
  for (char *p = names; p < names + n && cnt < 4096; p += strlen(p) + 1) if (*p) v[cnt++] = p;
  qsort(v, (size_t)cnt, sizeof v[0], cmp_bytes);
  fputs(",\"xattrs\":{", out);
  for (int i = 0; i < cnt; i++) {
    ssize_t len = lgetxattr(full, v[i], NULL, 0);
    unsigned char *val = malloc(len > 0 ? (size_t)len : 1);
    if (len > 0) len = lgetxattr(full, v[i], val, (size_t)len);
    if (len < 0) n_errors++;
    if (i) fputc(',', out);
    json_cstr(out, v[i]);
    fputs(":\"", out);
    for (ssize_t k = 0; k < len; k++) fprintf(out, "%02x", val[k]);
    fputc('"', out);
    free(val);
  }
  fputc('}', out);
  free(names);
}

static long n_xattr_checked;
static void walk(FILE *out, const char *root, const char *rel, int with_xattrs) {
  char full[8192];
  snprintf(full, sizeof full, "%s%s%s", root, *rel ? "/" : "", rel);
  struct stat st;
  if (lstat(full, &st) < 0) { n_errors++; fprintf(stderr, "lstat %s: %s\n", full, strerror(errno)); return; }
  n_entries++;
  fputs(first_entry ? "{\n" : ",\n", out); first_entry = 0;
  json_cstr(out, rel);
  fprintf(out, ":{\"type\":\"%s\",\"mode\":%u,\"uid\":%u,\"gid\":%u,\"nlink\":%lu,\"mtime_ns\":%lld",
          type_of(st.st_mode), (unsigned)(st.st_mode & 07777), (unsigned)st.st_uid, (unsigned)st.st_gid,
          (unsigned long)st.st_nlink, (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec);
  if (S_ISREG(st.st_mode)) {
    char hex[65];
    /* empty files are not opened (10,000 of them would cost minutes under TCG); their size is
       still compared, and the hash of nothing is known */
    long long r = st.st_size == 0 && !getenv("GT_OPEN_EMPTY") ? (strcpy(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"), 0)
                                                               : sha_path(full, hex);
    if (r < 0) { n_errors++; fprintf(stderr, "read %s: %s\n", full, strerror((int)-r)); strcpy(hex, "error"); }
    else if (r != st.st_size) { n_errors++; fprintf(stderr, "short read %s: %lld of %lld\n", full, r, (long long)st.st_size); }
    else n_bytes += (unsigned long long)r;
    fprintf(out, ",\"size\":%lld,\"sha256\":\"%s\"", (long long)st.st_size, hex);
  } else if (S_ISLNK(st.st_mode)) {
    char t[8192];
    ssize_t n = readlink(full, t, sizeof t);
    if (n < 0) { n_errors++; n = 0; }
    if (n != st.st_size) { n_errors++; fprintf(stderr, "readlink %s: %zd bytes, st_size %lld\n", full, n, (long long)st.st_size); }
    fputs(",\"target\":", out); json_str(out, t, (size_t)n);
  } else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
    fprintf(out, ",\"rdev\":[%u,%u]", major(st.st_rdev), minor(st.st_rdev));
  }
  if (with_xattrs) { emit_xattrs(out, full); n_xattr_checked++; }
  fputc('}', out);
  if (S_ISDIR(st.st_mode)) {
    DIR *d = opendir(full);
    if (!d) { n_errors++; return; }
    size_t cap = 64, cnt = 0; char **names = malloc(cap * sizeof *names);
    struct dirent *de;
    while ((de = readdir(d))) {
      if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
      if (cnt == cap) names = realloc(names, (cap *= 2) * sizeof *names);
      names[cnt++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(names, cnt, sizeof *names, cmp_str);
    for (size_t i = 0; i < cnt; i++) {
      char sub[8192];
      snprintf(sub, sizeof sub, "%s%s%s", rel, *rel ? "/" : "", names[i]);
      /* In directories of more than 1,000 entries only every 50th entry's xattrs are read: one
         LISTXATTR round trip costs ~3 ms under TCG. Host and guest apply the same rule. */
      walk(out, root, sub, cnt <= 1000 || i % 50 == 0 || getenv("GT_XATTR_ALL") != NULL);
      free(names[i]);
    }
    free(names);
  }
}

static int cmd_manifest(const char *root, const char *outpath) {
  FILE *out = fopen(outpath, "w");
  if (!out) { perror(outpath); return 2; }
  double t0 = now_ms();
  walk(out, root, "", 1);
  fputs(first_entry ? "{}\n" : "\n}\n", out);
  fclose(out);
  double ms = now_ms() - t0;
  char hex[65];
  sha_path(outpath, hex);
  printf("{\"test\":\"walk\",\"ok\":%s,\"entries\":%ld,\"xattr_checked\":%ld,\"errors\":%ld,\"bytes\":%llu,\"manifest_sha256\":\"%s\",\"ms\":%.0f}\n",
         n_errors ? "false" : "true", n_entries, n_xattr_checked, n_errors, n_bytes, hex, ms);
  return n_errors ? 1 : 0;
}

/* ---------- readdir ---------- */
struct linux_dirent64 { uint64_t d_ino; int64_t d_off; unsigned short d_reclen; unsigned char d_type; char d_name[]; };

/* Reads DIR from its current offset with buffer size bufsz; appends names to *v; returns count or -errno.
 * If stop_after > 0, stops after that many entries and stores the d_off of the last one in *off. */
static long read_names(int fd, size_t bufsz, char ***v, size_t *cnt, size_t *cap, long stop_after, int64_t *off, long *calls) {
  char *buf = malloc(bufsz);
  long got = 0;
  for (;;) {
    long n = syscall(SYS_getdents64, fd, buf, bufsz);
    (*calls)++;
    if (n < 0) { int e = errno; free(buf); return -e; }
    if (n == 0) break;
    for (long pos = 0; pos < n;) {
      struct linux_dirent64 *d = (void *)(buf + pos);
      if (d->d_reclen == 0) { free(buf); return -EIO; }
      pos += d->d_reclen;
      if (strcmp(d->d_name, ".") && strcmp(d->d_name, "..")) {
        if (*cnt == *cap) *v = realloc(*v, (*cap = *cap ? *cap * 2 : 1024) * sizeof **v);
        (*v)[(*cnt)++] = strdup(d->d_name);
        got++;
      }
      if (stop_after > 0 && got == stop_after) {
        *off = d->d_off;
        free(buf);
        return got;
      }
    }
  }
  free(buf);
  return got;
}

static void names_hash(char **v, size_t cnt, char hex[65], long *dups) {
  qsort(v, cnt, sizeof *v, cmp_str);
  sha256_ctx c; sha_init(&c);
  *dups = 0;
  for (size_t i = 0; i < cnt; i++) {
    if (i && !strcmp(v[i], v[i - 1])) (*dups)++;
    sha_update(&c, v[i], strlen(v[i])); sha_update(&c, "\n", 1);
  }
  sha_final(&c, hex);
}

static int cmd_readdir(const char *dir) {
  double t0 = now_ms();
  int ok = 1;
  char h_small[65], h_big[65], h_seek[65], h_rewind[65];
  long d1, d2, d3, d4, calls_small = 0, calls_big = 0, calls_seek = 0, calls_rw = 0;
  char **a = NULL, **b = NULL, **s = NULL, **r = NULL; size_t na = 0, ca = 0, nb = 0, cb = 0, ns = 0, cs = 0, nr = 0, cr = 0;
  int64_t off = 0;

  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd < 0) { printf("{\"test\":\"readdir\",\"ok\":false,\"error\":\"open: %s\"}\n", strerror(errno)); return 1; }
  long e1 = read_names(fd, 1024, &a, &na, &ca, 0, NULL, &calls_small);           /* small buffer */
  lseek(fd, 0, SEEK_SET);
  long e4 = read_names(fd, 32768, &r, &nr, &cr, 0, NULL, &calls_rw);              /* after rewind */
  close(fd);
  fd = open(dir, O_RDONLY | O_DIRECTORY);
  long e2 = read_names(fd, 65536, &b, &nb, &cb, 0, NULL, &calls_big);             /* large buffer */
  close(fd);
  /* seek test: read half, remember d_off, reopen, seek there, read the rest */
  fd = open(dir, O_RDONLY | O_DIRECTORY);
  long half = (long)(nb / 2) + 1;
  long e3 = read_names(fd, 4096, &s, &ns, &cs, half, &off, &calls_seek);
  close(fd);
  fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (lseek(fd, off, SEEK_SET) == (off_t)-1) ok = 0;
  long e3b = read_names(fd, 4096, &s, &ns, &cs, 0, NULL, &calls_seek);
  close(fd);
  if (e1 < 0 || e2 < 0 || e3 < 0 || e3b < 0 || e4 < 0) ok = 0;
  names_hash(a, na, h_small, &d1);
  names_hash(b, nb, h_big, &d2);
  names_hash(s, ns, h_seek, &d3);
  names_hash(r, nr, h_rewind, &d4);
  if (d1 || d2 || d3 || d4) ok = 0;
  if (na != nb || ns != nb || nr != nb) ok = 0;
  if (strcmp(h_small, h_big) || strcmp(h_seek, h_big) || strcmp(h_rewind, h_big)) ok = 0;
  printf("{\"test\":\"readdir\",\"ok\":%s,\"count\":%zu,\"names_sha256\":\"%s\",\"count_small\":%zu,\"count_seek\":%zu,"
         "\"count_rewind\":%zu,\"dups\":%ld,\"getdents_calls_small\":%ld,\"getdents_calls_big\":%ld,\"errno\":%ld,\"ms\":%.0f}\n",
         ok ? "true" : "false", nb, h_big, na, ns, nr, d1 + d2 + d3 + d4, calls_small, calls_big,
         -(e1 < 0 ? e1 : e2 < 0 ? e2 : e3 < 0 ? e3 : e3b < 0 ? e3b : e4 < 0 ? e4 : 0), now_ms() - t0);
  return ok ? 0 : 1;
}

/* ---------- mmap ---------- */
static int cmd_mmap(const char *path) {
  double t0 = now_ms();
  int fd = open(path, O_RDONLY);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) < 0) { printf("{\"test\":\"mmap\",\"ok\":false,\"error\":\"%s\"}\n", strerror(errno)); return 1; }
  long pg = sysconf(_SC_PAGESIZE);
  size_t size = (size_t)st.st_size, maplen = (size + (size_t)pg - 1) / (size_t)pg * (size_t)pg;
  int ok = 1, tail_zero = 1;
  char h_map[65] = "", h_read[65] = "", h_off[65] = "", h_poff[65] = "";
  if (size == 0) { printf("{\"test\":\"mmap\",\"ok\":false,\"error\":\"empty file\"}\n"); return 1; }
  unsigned char *m = mmap(NULL, maplen, PROT_READ, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) { printf("{\"test\":\"mmap\",\"ok\":false,\"error\":\"mmap: %s\"}\n", strerror(errno)); return 1; }
  /* touch pages backwards so the kernel cannot just read ahead sequentially */
  volatile unsigned sum = 0;
  for (size_t o = maplen; o >= (size_t)pg; o -= (size_t)pg) sum += m[o - (size_t)pg];
  sha256_ctx c; sha_init(&c); sha_update(&c, m, size); sha_final(&c, h_map);
  for (size_t i = size; i < maplen; i++) if (m[i]) { tail_zero = 0; break; }
  madvise(m, maplen, MADV_DONTNEED);
  munmap(m, maplen);
  /* a mapping at a page-aligned offset in the middle of the file, compared with pread */
  size_t off = (size / 2) / (size_t)pg * (size_t)pg, len = size - off;
  unsigned char *m2 = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, (off_t)off);
  if (m2 == MAP_FAILED) ok = 0;
  else {
    sha_init(&c); sha_update(&c, m2, len); sha_final(&c, h_off); munmap(m2, len);
    unsigned char *buf = malloc(len);
    ssize_t r = pread(fd, buf, len, (off_t)off);
    if (r != (ssize_t)len) ok = 0;
    sha_init(&c); sha_update(&c, buf, r > 0 ? (size_t)r : 0); sha_final(&c, h_poff);
    free(buf);
    if (strcmp(h_off, h_poff)) ok = 0;
  }
  lseek(fd, 0, SEEK_SET);
  if (sha_fd(fd, h_read, 65536) != (long long)size) ok = 0;
  close(fd);
  if (strcmp(h_map, h_read) || !tail_zero) ok = 0;
  printf("{\"test\":\"mmap\",\"ok\":%s,\"path\":", ok ? "true" : "false");
  json_cstr(stdout, path);
  printf(",\"size\":%zu,\"sha256\":\"%s\",\"read_sha256\":\"%s\",\"offset\":%zu,\"offset_sha256\":\"%s\",\"tail_zero\":%s,\"ms\":%.0f}\n",
         size, h_map, h_read, off, h_off, tail_zero ? "true" : "false", now_ms() - t0);
  return ok ? 0 : 1;
}

/* ---------- O_DIRECT ---------- */
static int cmd_odirect(const char *path) {
  double t0 = now_ms();
  int fd = open(path, O_RDONLY | O_DIRECT);
  if (fd < 0) { printf("{\"test\":\"odirect\",\"ok\":false,\"error\":\"open O_DIRECT: %s\"}\n", strerror(errno)); return 1; }
  size_t chunk = 1 << 16;
  void *buf;
  if (posix_memalign(&buf, 4096, chunk)) return 2;
  sha256_ctx c; sha_init(&c);
  long long total = 0; int ok = 1, err = 0; long reads = 0;
  for (;;) {
    ssize_t r = read(fd, buf, chunk);
    reads++;
    if (r < 0) { err = errno; ok = 0; break; }
    if (r == 0) break;
    sha_update(&c, buf, (size_t)r); total += r;
  }
  char h_direct[65], h_read[65];
  sha_final(&c, h_direct);
  /* an aligned pread in the middle */
  struct stat st; fstat(fd, &st);
  long long mid = (st.st_size / 2) / 4096 * 4096;
  ssize_t pr = pread(fd, buf, 4096, mid);
  int pread_ok = pr == (st.st_size - mid < 4096 ? st.st_size - mid : 4096);
  close(fd);
  if (sha_path(path, h_read) != st.st_size) ok = 0;
  if (total != st.st_size || strcmp(h_direct, h_read) || !pread_ok) ok = 0;
  printf("{\"test\":\"odirect\",\"ok\":%s,\"path\":", ok ? "true" : "false");
  json_cstr(stdout, path);
  printf(",\"size\":%lld,\"sha256\":\"%s\",\"read_sha256\":\"%s\",\"reads\":%ld,\"pread_ok\":%s,\"errno\":%d,\"ms\":%.0f}\n",
         (long long)st.st_size, h_direct, h_read, reads, pread_ok ? "true" : "false", err, now_ms() - t0);
  free(buf);
  return ok ? 0 : 1;
}

/* ---------- parallel readers ---------- */
static int cmd_parallel(int n, int nfiles, char **files) {
  double t0 = now_ms();
  int pipes[64][2];
  if (n > 64) n = 64;
  for (int i = 0; i < n; i++) {
    if (pipe(pipes[i])) return 2;
    pid_t p = fork();
    if (p == 0) {
      close(pipes[i][0]);
      FILE *w = fdopen(pipes[i][1], "w");
      size_t chunk = (size_t)4096 << (i % 5); /* 4 KiB .. 64 KiB */
      for (int k = 0; k < nfiles; k++) {
        int j = (k + i) % nfiles; /* each reader starts with a different file */
        char hex[65];
        int fd = open(files[j], O_RDONLY);
        long long r = fd < 0 ? -errno : sha_fd(fd, hex, chunk);
        if (fd >= 0) close(fd);
        fprintf(w, "%d %lld %s\n", j, r, r < 0 ? "error" : hex);
      }
      fclose(w);
      _exit(0);
    }
    close(pipes[i][1]);
  }
  char first[64][65]; long long sizes[64];
  int ok = 1;
  for (int i = 0; i < n; i++) {
    FILE *r = fdopen(pipes[i][0], "r");
    int j; long long sz; char hex[80];
    int got = 0;
    while (fscanf(r, "%d %lld %79s", &j, &sz, hex) == 3) {
      got++;
      if (j < 0 || j >= nfiles || j >= 64) { ok = 0; continue; }
      if (sz < 0) ok = 0;
      if (i == 0) { strcpy(first[j], hex); sizes[j] = sz; }
      else if (strcmp(first[j], hex) || sizes[j] != sz) ok = 0;
    }
    if (got != nfiles) ok = 0;
    fclose(r);
  }
  for (int i = 0; i < n; i++) { int status; wait(&status); if (!WIFEXITED(status) || WEXITSTATUS(status)) ok = 0; }
  printf("{\"test\":\"parallel\",\"ok\":%s,\"readers\":%d,\"files\":{", ok ? "true" : "false", n);
  for (int j = 0; j < nfiles && j < 64; j++) {
    if (j) putchar(',');
    json_cstr(stdout, files[j]);
    printf(":\"%s\"", first[j]);
  }
  printf("},\"ms\":%.0f}\n", now_ms() - t0);
  return ok ? 0 : 1;
}

static int cmd_sha(const char *path, const char *test) {
  double t0 = now_ms();
  char hex[65];
  long long r = sha_path(path, hex);
  printf("{\"test\":\"%s\",\"ok\":%s,\"path\":", test, r >= 0 ? "true" : "false");
  json_cstr(stdout, path);
  if (r < 0) printf(",\"error\":\"%s\"}\n", strerror((int)-r));
  else printf(",\"size\":%lld,\"sha256\":\"%s\",\"ms\":%.0f}\n", r, hex, now_ms() - t0);
  return r >= 0 ? 0 : 1;
}

static int cmd_xattr(const char *path) {
  int ok = 1;
  ssize_t need = llistxattr(path, NULL, 0);
  char *names = malloc(need > 0 ? (size_t)need : 1);
  ssize_t got = need > 0 ? llistxattr(path, names, (size_t)need) : need;
  if (need < 0 || got != need) ok = 0;
  /* a too-small buffer must give ERANGE */
  int erange = 1;
  if (need > 1) { char tiny[1]; erange = llistxattr(path, tiny, 1) < 0 && errno == ERANGE; }
  if (!erange) ok = 0;
  int count = 0, values_ok = 1;
  for (char *p = names; got > 0 && p < names + got; p += strlen(p) + 1) {
    count++;
    ssize_t vl = lgetxattr(path, p, NULL, 0);
    if (vl < 0) { values_ok = 0; continue; }
    char *v = malloc((size_t)vl + 1);
    if (lgetxattr(path, p, v, (size_t)vl) != vl) values_ok = 0;
    if (vl > 1 && !(lgetxattr(path, p, v, 1) < 0 && errno == ERANGE)) values_ok = 0;
    free(v);
  }
  char dummy[16];
  int enodata = lgetxattr(path, "user.gtest.does-not-exist", dummy, sizeof dummy) < 0 && errno == ENODATA;
  if (!enodata || !values_ok) ok = 0;
  printf("{\"test\":\"xattr\",\"ok\":%s,\"path\":", ok ? "true" : "false");
  json_cstr(stdout, path);
  printf(",\"count\":%d,\"list_size\":%zd,\"erange\":%s,\"enodata\":%s,\"values_ok\":%s}\n", count, need,
         erange ? "true" : "false", enodata ? "true" : "false", values_ok ? "true" : "false");
  free(names);
  return ok ? 0 : 1;
}


/* ---------- hard links ---------- */
static int cmd_hardlink(const char *a, const char *b) {
  struct stat sa, sb;
  int ea = lstat(a, &sa) < 0 ? errno : 0, eb = lstat(b, &sb) < 0 ? errno : 0;
  int same = !ea && !eb && sa.st_ino == sb.st_ino && sa.st_dev == sb.st_dev;
  int ok = same && sa.st_nlink == 2 && sb.st_nlink == 2;
  printf("{\"test\":\"hardlink\",\"ok\":%s,\"same_inode\":%s,\"nlink\":[%lu,%lu],\"errno\":%d}\n", ok ? "true" : "false",
         same ? "true" : "false", ea ? 0UL : (unsigned long)sa.st_nlink, eb ? 0UL : (unsigned long)sb.st_nlink, ea ? ea : eb);
  return ok ? 0 : 1;
}

/* ---------- read-only export: every modification must fail with EROFS and change nothing ---------- */
static int cmd_rofs(const char *dir) {
  char file[4096], p[4096];
  snprintf(file, sizeof file, "%s/file", dir);
  struct stat before, after;
  if (lstat(file, &before) < 0) { printf("{\"test\":\"rofs\",\"ok\":false,\"error\":\"lstat: %s\"}\n", strerror(errno)); return 1; }
  int ok = 1, fd;
  printf("{\"test\":\"rofs\",\"errno\":{");
  int first = 1;
#define TRY(name, expr) do { errno = 0; long r_ = (long)(expr); int e_ = r_ < 0 ? errno : 0; \
    if (e_ != EROFS) { ok = 0; } printf("%s\"%s\":%d", first ? "" : ",", name, e_); first = 0; } while (0)
  TRY("open_wronly", (fd = open(file, O_WRONLY)) >= 0 ? (close(fd), 0) : -1);
  TRY("open_rdwr", (fd = open(file, O_RDWR)) >= 0 ? (close(fd), 0) : -1);
  snprintf(p, sizeof p, "%s/gtest-new", dir);
  TRY("create", (fd = open(p, O_CREAT | O_WRONLY | O_EXCL, 0644)) >= 0 ? (close(fd), 0) : -1);
  snprintf(p, sizeof p, "%s/gtest-dir", dir);
  TRY("mkdir", mkdir(p, 0755));
  snprintf(p, sizeof p, "%s/gtest-fifo", dir);
  TRY("mknod", mknod(p, S_IFIFO | 0644, 0));
  snprintf(p, sizeof p, "%s/gtest-link", dir);
  TRY("symlink", symlink("target", p));
  snprintf(p, sizeof p, "%s/gtest-hard", dir);
  TRY("link", link(file, p));
  snprintf(p, sizeof p, "%s/gtest-renamed", dir);
  TRY("rename", rename(file, p));
  TRY("unlink", unlink(file));
  TRY("chmod", chmod(file, 0600));
  TRY("chown", chown(file, 1234, 1234));
  TRY("truncate", truncate(file, 0));
  TRY("utimes", utimensat(AT_FDCWD, file, NULL, 0));
  TRY("setxattr", setxattr(file, "user.gtest", "v", 1, 0));
  TRY("removexattr", removexattr(file, "user.a"));
#undef TRY
  int unchanged = lstat(file, &after) == 0 && after.st_size == before.st_size && after.st_mode == before.st_mode &&
                  after.st_uid == before.st_uid && after.st_mtim.tv_sec == before.st_mtim.tv_sec &&
                  after.st_mtim.tv_nsec == before.st_mtim.tv_nsec;
  snprintf(p, sizeof p, "%s/gtest-new", dir);
  int nothing_new = access(p, F_OK) < 0 && errno == ENOENT;
  if (!unchanged || !nothing_new) ok = 0;
  printf("},\"ok\":%s,\"unchanged\":%s,\"nothing_created\":%s}\n", ok ? "true" : "false", unchanged ? "true" : "false",
         nothing_new ? "true" : "false");
  return ok ? 0 : 1;
}

/* ---------- timing (benchmark) ---------- */
static char *chunk_buf(void) {
  static char *buf;
  if (!buf) buf = malloc(1 << 20);
  return buf;
}

static int cmd_readtime(const char *test, const char *path, long long len) {
  double t0 = now_ms();
  int fd = open(path, O_RDONLY);
  if (fd < 0) { printf("{\"test\":\"%s\",\"ok\":false,\"error\":\"open: %s\"}\n", test, strerror(errno)); return 1; }
  struct stat st;
  fstat(fd, &st);
  long long want = len >= 0 && len < (long long)st.st_size ? len : (long long)st.st_size, got = 0;
  char *buf = chunk_buf();
  double first = -1;
  while (got < want) {
    size_t n = want - got < (1 << 20) ? (size_t)(want - got) : (size_t)1 << 20;
    ssize_t r = read(fd, buf, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    if (first < 0) first = now_ms() - t0;
    got += r;
  }
  close(fd);
  double ms = now_ms() - t0;
  printf("{\"test\":\"%s\",\"ok\":%s,\"bytes\":%lld,\"first_ms\":%.3f,\"ms\":%.3f}\n", test, got == want ? "true" : "false",
         got, first, ms);
  return got == want ? 0 : 1;
}

static int cmd_partime(const char *test, int n, const char *path) {
  struct stat st;
  if (n < 1 || n > 64 || stat(path, &st) < 0) { printf("{\"test\":\"%s\",\"ok\":false,\"error\":\"bad arguments\"}\n", test); return 1; }
  long long size = (long long)st.st_size, part = (size + n - 1) / n;
  double t0 = now_ms();
  for (int i = 0; i < n; i++) {
    if (fork() == 0) {
      long long off = part * i, end = off + part < size ? off + part : size, got = 0;
      int fd = open(path, O_RDONLY);
      char *buf = chunk_buf();
      while (fd >= 0 && off + got < end) {
        size_t k = end - off - got < (1 << 20) ? (size_t)(end - off - got) : (size_t)1 << 20;
        ssize_t r = pread(fd, buf, k, off + got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += r;
      }
      _exit(off + got == end ? 0 : 1);
    }
  }
  int ok = 1;
  for (int i = 0; i < n; i++) { int status; if (wait(&status) < 0 || !WIFEXITED(status) || WEXITSTATUS(status)) ok = 0; }
  double ms = now_ms() - t0;
  printf("{\"test\":\"%s\",\"ok\":%s,\"readers\":%d,\"bytes\":%lld,\"ms\":%.3f}\n", test, ok ? "true" : "false", n, size, ms);
  return ok ? 0 : 1;
}

static long long t_entries, t_files, t_bytes, t_errors;
static void walktime(const char *dir, int read_files) {
  DIR *d = opendir(dir);
  if (!d) { t_errors++; return; }
  struct dirent *de;
  char full[8192];
  while ((de = readdir(d))) {
    if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
    snprintf(full, sizeof full, "%s/%s", dir, de->d_name);
    struct stat st;
    if (lstat(full, &st) < 0) { t_errors++; continue; }
    t_entries++;
    if (S_ISDIR(st.st_mode)) walktime(full, read_files);
    else if (S_ISREG(st.st_mode)) {
      t_files++;
      if (!read_files) continue;
      int fd = open(full, O_RDONLY);
      if (fd < 0) { t_errors++; continue; }
      long long got = 0;
      for (;;) {
        ssize_t r = read(fd, chunk_buf(), 1 << 20);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += r;
      }
      close(fd);
      if (got != (long long)st.st_size) t_errors++;
      t_bytes += got;
    }
  }
  closedir(d);
}

static int cmd_walktime(const char *test, const char *mode, const char *dir) {
  int read_files = !strcmp(mode, "read");
  double t0 = now_ms();
  walktime(dir, read_files);
  double ms = now_ms() - t0;
  printf("{\"test\":\"%s\",\"ok\":%s,\"mode\":\"%s\",\"entries\":%lld,\"files\":%lld,\"bytes\":%lld,\"errors\":%lld,\"ms\":%.3f}\n",
         test, t_errors || !t_entries ? "false" : "true", read_files ? "read" : "stat", t_entries, t_files, t_bytes, t_errors, ms);
  return t_errors ? 1 : 0;
}

int main(int argc, char **argv) {
  if (argc >= 4 && !strcmp(argv[1], "manifest")) return cmd_manifest(argv[2], argv[3]);
  if (argc >= 3 && !strcmp(argv[1], "readdir")) return cmd_readdir(argv[2]);
  if (argc >= 3 && !strcmp(argv[1], "mmap")) return cmd_mmap(argv[2]);
  if (argc >= 3 && !strcmp(argv[1], "odirect")) return cmd_odirect(argv[2]);
  if (argc >= 4 && !strcmp(argv[1], "parallel")) return cmd_parallel(atoi(argv[2]), argc - 3, argv + 3);
  if (argc >= 3 && !strcmp(argv[1], "sha")) return cmd_sha(argv[2], argc >= 4 ? argv[3] : "sha");
  if (argc >= 3 && !strcmp(argv[1], "xattr")) return cmd_xattr(argv[2]);
  if (argc >= 4 && !strcmp(argv[1], "hardlink")) return cmd_hardlink(argv[2], argv[3]);
  if (argc >= 3 && !strcmp(argv[1], "rofs")) return cmd_rofs(argv[2]);
  if (argc >= 4 && !strcmp(argv[1], "readtime")) return cmd_readtime(argv[2], argv[3], argc >= 5 ? atoll(argv[4]) : -1);
  if (argc >= 5 && !strcmp(argv[1], "partime")) return cmd_partime(argv[2], atoi(argv[3]), argv[4]);
  if (argc >= 5 && !strcmp(argv[1], "walktime")) return cmd_walktime(argv[2], argv[3], argv[4]);
  fprintf(stderr, "usage: gtest manifest ROOT OUT | readdir DIR | mmap FILE | odirect FILE | "
                  "parallel N FILE... | sha FILE [TEST] | xattr PATH | hardlink A B | rofs DIR | "
                  "readtime TEST FILE [LEN] | partime TEST N FILE | walktime TEST read|stat DIR\n");
  return 2;
}
