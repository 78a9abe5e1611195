#!/usr/bin/env bash
# Rebuilds the bundled sample image from samples/tree (reproducible: fixed time and UUID).
set -euo pipefail
cd "$(dirname "$0")"
mkfs.erofs --quiet -zlz4hc -T1700000000 -U 6c1f4a52-6b5e-4f1e-9b1e-0f0e7a1a2b3c --all-root sample.erofs tree
