#!/usr/bin/env bash
# mypy over the installed layout (dcwatch, dcwatch.agent, dcwatch.exporters, dcwatch.detectors).
# mypy cannot follow setuptools' editable-install finder, so this lays the mapping out as a tree
# of links under build/typecheck/ and checks that; messages name the real files.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/typecheck
rm -rf "$tree" && mkdir -p "$tree/dcwatch"
for f in dcwatch/*; do ln -s "$PWD/$f" "$tree/dcwatch/"; done
for p in agent exporters detectors; do ln -s "$PWD/$p" "$tree/dcwatch/$p"; done
cd "$tree"
../../.venv/bin/mypy --config-file ../../pyproject.toml -p dcwatch "$@" 2>&1 \
  | sed -e "s#^dcwatch/agent/#agent/#" -e "s#^dcwatch/exporters/#exporters/#" \
        -e "s#^dcwatch/detectors/#detectors/#"
exit "${PIPESTATUS[0]}"
