#!/usr/bin/env bash
# Builds the Sesame container image FROM scratch with buildah, from a
# locally built binary: the binary, the shared libraries `ldd` lists (and
# the loader), CA certificates, /etc/passwd with the non-root user 65532,
# /tmp and /data. The same image deploy/Dockerfile describes, without a
# Docker engine or a registry:
#
#   cargo build --release -p sesame
#   deploy/build-image.sh [path/to/sesame] [image name]   # default localhost/sesame:dev
#
# Needs root (or a rootless buildah set-up) and Debian's buildah; uses the
# vfs storage driver, which works without overlay or fuse.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${1:-${CARGO_TARGET_DIR:-target}/release/sesame}"
IMAGE="${2:-localhost/sesame:dev}"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
B=(buildah --storage-driver vfs)

if [ ! -x "$BIN" ]; then
    echo "build-image: no binary at $BIN (cargo build --release -p sesame first)" >&2
    exit 1
fi

ctr="$("${B[@]}" from scratch)"
trap '"${B[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
mnt="$("${B[@]}" mount "$ctr")"

install -D -m 0755 "$BIN" "$mnt/usr/local/bin/sesame"
strip --strip-debug "$mnt/usr/local/bin/sesame" 2>/dev/null || true
# Every shared library the binary loads, at the path the loader looks for it.
for lib in $(ldd "$BIN" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    mkdir -p "$mnt$(dirname "$lib")"
    cp -L "$lib" "$mnt$lib"
done
mkdir -p "$mnt/etc/ssl/certs" "$mnt/tmp" "$mnt/data"
chmod 1777 "$mnt/tmp"
chown 65532:65532 "$mnt/data"
cp -L /etc/ssl/certs/ca-certificates.crt "$mnt/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/data:/sbin/nologin\n' >"$mnt/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$mnt/etc/group"
"${B[@]}" umount "$ctr" >/dev/null

"${B[@]}" config \
    --entrypoint '["/usr/local/bin/sesame"]' --cmd serve \
    --user 65532:65532 --workingdir /data \
    --port 50051 --port 9464 \
    --env SESAME_LISTEN=0.0.0.0:50051 --env SESAME_ADMIN_LISTEN=0.0.0.0:9464 \
    --env SESAME_DATA_DIR=/data --env SESAME_LOG_FORMAT=json \
    --label org.opencontainers.image.title=sesame \
    --label "org.opencontainers.image.description=Push-notification authentication backbone" \
    --label "org.opencontainers.image.version=$VERSION" \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    --label org.opencontainers.image.source=https://github.com/sesame-auth/sesame \
    "$ctr"
"${B[@]}" commit --quiet "$ctr" "$IMAGE" >/dev/null
size="$("${B[@]}" images --format '{{.Size}}' "$IMAGE" | head -n 1)"
echo "built $IMAGE ($size)"
