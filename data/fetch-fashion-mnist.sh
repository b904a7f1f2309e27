#!/usr/bin/env bash
# Fetches Fashion-MNIST (Zalando, MIT license) into DEST_DIR as the four
# standard gzip-compressed IDX files:
#   train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
#   t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz
# from the Debian package `dataset-fashion-mnist` (files under
# usr/share/datasets/fashion-mnist/). Idempotent: does nothing when the four
# files are already there and decompress to the right sizes.
#
# Usage: data/fetch-fashion-mnist.sh DEST_DIR
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 DEST_DIR" >&2
    exit 2
fi
DEST=$1
PKG=dataset-fashion-mnist
PKG_DIR=usr/share/datasets/fashion-mnist
FILES="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"

# Decompressed sizes: a 16-byte header + 60000/10000 images of 28x28, or an
# 8-byte header + one byte per label. Checked on content, not on the .gz size,
# which depends on the compressor that made it.
expected_size() {
    case $1 in
        train-images-idx3-ubyte.gz) echo 47040016 ;;
        train-labels-idx1-ubyte.gz) echo 60008 ;;
        t10k-images-idx3-ubyte.gz) echo 7840016 ;;
        t10k-labels-idx1-ubyte.gz) echo 10008 ;;
    esac
}

# True when $1 is a valid gzip file that decompresses to the expected size.
file_ok() {
    local f=$1 name
    name=$(basename "$f")
    [ -s "$f" ] || return 1
    [ "$(gzip -dc "$f" 2>/dev/null | wc -c)" = "$(expected_size "$name")" ]
}

all_ok() {
    local name
    for name in $FILES; do
        file_ok "$1/$name" || return 1
    done
}

give_up() {
    cat >&2 <<EOF
error: could not fetch Fashion-MNIST: $1
Place these four files (gzip-compressed IDX, from the Debian package $PKG,
https://github.com/zalandoresearch/fashion-mnist, or any MNIST-format mirror)
in $DEST/:
  $DEST/train-images-idx3-ubyte.gz   (decompresses to 47040016 bytes)
  $DEST/train-labels-idx1-ubyte.gz   (decompresses to 60008 bytes)
  $DEST/t10k-images-idx3-ubyte.gz    (decompresses to 7840016 bytes)
  $DEST/t10k-labels-idx1-ubyte.gz    (decompresses to 10008 bytes)
EOF
    exit 1
}

if all_ok "$DEST"; then
    echo "fashion-mnist: $DEST already holds the four files; nothing to do"
    exit 0
fi

for tool in apt-get dpkg gzip; do
    command -v "$tool" >/dev/null 2>&1 || give_up "'$tool' is not installed"
done

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

download() {
    (cd "$TMP" && apt-get download "$PKG") >"$TMP/download.log" 2>&1
}

if ! download; then
    echo "fashion-mnist: 'apt-get download $PKG' failed; running 'apt-get update' and retrying" >&2
    if [ "$(id -u)" -eq 0 ]; then
        if ! apt-get update >"$TMP/update.log" 2>&1; then
            echo "fashion-mnist: 'apt-get update' failed:" >&2
            tail -n 3 "$TMP/update.log" >&2
        fi
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        if ! sudo -n apt-get update >"$TMP/update.log" 2>&1; then
            echo "fashion-mnist: 'sudo apt-get update' failed:" >&2
            tail -n 3 "$TMP/update.log" >&2
        fi
    else
        echo "fashion-mnist: not root and no passwordless sudo: cannot run 'apt-get update'; ask an administrator to run it" >&2
    fi
    if ! download; then
        tail -n 5 "$TMP/download.log" >&2
        give_up "'apt-get download $PKG' failed (is a Debian/Ubuntu archive with $PKG reachable?)"
    fi
fi

DEB=$(find "$TMP" -maxdepth 1 -name "${PKG}_*.deb" | head -n 1)
[ -n "$DEB" ] || give_up "apt-get download produced no .deb file"
dpkg -x "$DEB" "$TMP/root" || give_up "'dpkg -x $DEB' failed"

mkdir -p "$DEST"
for name in $FILES; do
    src=$TMP/root/$PKG_DIR/$name
    [ -f "$src" ] || give_up "the package does not contain $PKG_DIR/$name"
    file_ok "$src" || give_up "$PKG_DIR/$name in the package is corrupt or has an unexpected size"
    cp "$src" "$DEST/$name.tmp"
    mv "$DEST/$name.tmp" "$DEST/$name"
done

all_ok "$DEST" || give_up "the copied files in $DEST fail the size check"
echo "fashion-mnist: wrote $FILES to $DEST"
