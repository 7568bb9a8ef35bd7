#!/usr/bin/env bash
# Set up dcwatch on this machine: Debian packages (Prometheus, Alertmanager, node_exporter)
# when run as root, then a virtual environment in .venv with
# dcwatch and its dev extras. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus, alertmanager (promtool, amtool): e2e and rule tests; node_exporter: the benchmark;
# chromium + a font: the overview page's browser test; systemd: systemd-analyze verify.
APT_PACKAGES=(prometheus prometheus-alertmanager prometheus-node-exporter chromium
              fonts-dejavu-core systemd)
# kubectl renders the kustomization in tests; Debian's client only where none is installed.
command -v kubectl >/dev/null || APT_PACKAGES+=(kubernetes-client)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Debian would start the packaged daemons on install; the tests start their own copies on
    # free ports. policy-rc.d (only while we install, only when none exists) keeps them from
    # starting, so nothing has to be stopped afterwards: a user's own Prometheus is never touched.
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && own_policy=1
    fi
    # --no-install-recommends keeps it small.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
    [ "$own_policy" = 1 ] && rm -f "$policy"
    [ "${status:-0}" = 0 ] || { echo "setup: apt-get install failed" >&2; exit 1; }
  else
    echo "setup: not root: cannot install ${missing[*]}; tests needing them will be skipped" >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Install (editable, with the dev extras) only when pyproject.toml changed since the last time.
stamp=.venv/.dcwatch-pyproject.sha256
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c 'import dcwatch' 2>/dev/null; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # setuptools warns that the checkout's dcwatch/ folder shadows the package: it is the package.
  .venv/bin/python -m pip install -q -e '.[dev]' > .venv/pip-install.log 2>&1 \
    || { cat .venv/pip-install.log >&2; echo "setup: pip install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
.venv/bin/python -c 'import dcwatch.agent.app, dcwatch.detectors.web.app' \
  || { echo "setup: the virtual environment is broken" >&2; exit 1; }
echo "setup: ok (.venv ready)"
