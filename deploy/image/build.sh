#!/bin/sh
# Builds the sluice OCI image from Debian packages alone (no container registry needed):
# a minimal Debian root file system (mmdebstrap, or debootstrap) with python3, sluice's
# wheels installed by install.sh (the same script the Dockerfile runs), imported with podman.
#
#   deploy/image/build.sh [TAG]        # default sluice:<version>; needs root, podman,
#                                      # mmdebstrap or debootstrap (apt-get installs them)
# Environment: SUITE (bookworm), MIRROR (the host's Debian mirror), KEEP_ROOTFS=DIR.
set -eu
cd "$(dirname "$0")/../.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
tag=${1:-sluice:$version}
suite=${SUITE:-bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}

need() {  # command, Debian package
    command -v "$1" >/dev/null 2>&1 && return
    echo "build.sh: installing $2" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null
}
need podman podman
command -v mmdebstrap >/dev/null 2>&1 || command -v debootstrap >/dev/null 2>&1 \
    || need mmdebstrap mmdebstrap

work=$(mktemp -d /tmp/sluice-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
python=.venv/bin/python
[ -x "$python" ] || python=python3
echo "build.sh: wheels for sluice $version" >&2
"$python" -m pip wheel -q --wheel-dir "$work/wheels" . 2>&1 | grep -v WARNING >&2 || true
ls "$work/wheels"/sluice-*.whl >/dev/null

rootfs="$work/rootfs"
packages=python3,python3-venv,ca-certificates
echo "build.sh: Debian $suite root file system" >&2
if command -v mmdebstrap >/dev/null 2>&1; then
    mmdebstrap --quiet --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror"
else
    debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >/dev/null
fi
cp -r "$work/wheels" "$rootfs/tmp/wheels"
cp deploy/image/install.sh "$rootfs/tmp/install.sh"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 chroot "$rootfs" /bin/sh /tmp/install.sh
rm -f "$rootfs/tmp/install.sh"
# What a minimal image does not need: apt's state and the package manager's caches.
rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*
[ -n "${KEEP_ROOTFS:-}" ] && cp -a "$rootfs" "$KEEP_ROOTFS"

echo "build.sh: importing $tag" >&2
tar -C "$rootfs" --numeric-owner -cf - . | podman import \
    --change 'USER sluice' \
    --change 'ENV PYTHONUNBUFFERED=1' \
    --change 'EXPOSE 6033' --change 'EXPOSE 9033' \
    --change 'STOPSIGNAL SIGTERM' \
    --change 'ENTRYPOINT ["/usr/local/bin/sluice"]' \
    --change 'CMD ["run", "-c", "/etc/sluice/sluice.yaml"]' \
    --message "sluice $version from Debian $suite" - "$tag" >/dev/null
podman image inspect --format '{{.Id}} {{.Size}}' "$tag"
