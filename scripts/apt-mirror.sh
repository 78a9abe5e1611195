#!/usr/bin/env bash
# Prints the Debian archive this machine's apt already uses: the URI of the first deb822
# (`URIs:`) or one-line (`deb URI SUITE main`) source whose suite is a plain release (not
# -security, not -updates, not -backports). Scripts that fetch from other Debian suites (sid,
# bookworm-backports) use it, so no host name is written anywhere in the repository.
# EROFS_VFSD_DEBIAN_MIRROR overrides it.
set -euo pipefail
if [ -n "${EROFS_VFSD_DEBIAN_MIRROR:-}" ]; then echo "$EROFS_VFSD_DEBIAN_MIRROR"; exit 0; fi
RELEASES='bookworm|trixie|forky|duke|sid|stable|testing|unstable|oldstable'
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  uri=$(awk -v rel="^($RELEASES)\$" '
    function check() { n = split(s, a, /[[:space:]]+/); for (i = 1; i <= n; i++) if (a[i] ~ rel && c ~ /(^|[[:space:]])main([[:space:]]|$)/ && u) { print u; exit } }
    /^[[:space:]]*$/ { check(); u = ""; s = ""; c = ""; next }
    /^URIs:/ { u = $2 } /^Suites:/ { $1 = ""; s = $0 } /^Components:/ { $1 = ""; c = $0 }
    END { check() }' "$f" | head -n1)
  [ -n "$uri" ] && { echo "$uri"; exit 0; }
done
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [ -f "$f" ] || continue
  uri=$(awk -v rel="^($RELEASES)\$" '$1 == "deb" && $3 ~ rel && / main/ { u = $2; if (u ~ /^\[/) { u = $3 } print u; exit }' "$f")
  [ -n "$uri" ] && { echo "$uri"; exit 0; }
done
echo "apt-mirror: no Debian archive found in the apt sources (set EROFS_VFSD_DEBIAN_MIRROR)" >&2
exit 1
