#!/bin/sh
# Runs inside the image's root file system (a Dockerfile RUN, or chroot from build.sh), so
# both ways give the same layout:
#   /opt/sluice/venv          sluice and its dependencies (wheels only, no compilers)
#   /usr/local/bin/sluice     the command (the image's entrypoint)
#   /etc/sluice/sluice.yaml   the config, mounted by the user
#   /run/sluice               unix sockets (writable by the sluice user)
#   user and group sluice, 10001:10001
# Expects the wheels (sluice's and its dependencies') in /tmp/wheels.
set -eu
python3 -m venv /opt/sluice/venv
/opt/sluice/venv/bin/pip install --no-index --no-cache-dir --no-compile \
    --find-links /tmp/wheels sluice
/opt/sluice/venv/bin/pip uninstall -y -q pip setuptools 2>/dev/null || true  # not needed to run
/opt/sluice/venv/bin/python -m compileall -q /opt/sluice/venv/lib  # read-only root: no .pyc later
ln -sf /opt/sluice/venv/bin/sluice /usr/local/bin/sluice
groupadd --gid 10001 sluice
useradd --uid 10001 --gid sluice --home-dir /nonexistent --no-create-home \
    --shell /usr/sbin/nologin sluice
install -d -m 0755 /etc/sluice
install -d -m 0755 -o sluice -g sluice /run/sluice
rm -rf /tmp/wheels /root/.cache /var/cache/apt/archives/*.deb /var/lib/apt/lists/* \
    /usr/share/doc/* /usr/share/man/* /usr/share/locale/*
