#!/usr/bin/env bash
# Install everything the test suite needs and run the whole suite.
#
#   bash tools/test.sh            # as root, or as a user with sudo
#
# Steps: Debian/Ubuntu system libraries for headless Qt (Xvfb, xcb, EGL, OpenMP),
# a fresh virtual environment (.venv, or $VENV) with the package and its
# `testing` + `docs` extras, then: ruff lint, the pytest suite (napari viewer
# tests under Xvfb via pytest-xvfb), the wheel check (manifest and sample images
# inside the wheel; the core imports in a venv without napari/Qt; npe2 validate),
# and the docs build with warnings as errors.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi

APT_PACKAGES=(
  xvfb xauth libgl1 libglib2.0-0 libdbus-1-3 libfontconfig1 libxkbcommon-x11-0
  libegl1 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-render-util0
  libxcb-shape0 libxcb-xinerama0 libxcb-cursor0 libgomp1
)
if ! "$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1; then
  APT_PACKAGES+=(python3-venv)
fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt: installing ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

echo "== venv: $VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[testing,docs]"

echo "== ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .

# Xvfb servers that exist before the run are not ours; any new one left over is.
xvfb_before=$(pgrep -x Xvfb || true)
cleanup() {
  for pid in $(pgrep -x Xvfb || true); do
    if ! grep -qx "$pid" <<<"$xvfb_before"; then kill "$pid" 2>/dev/null || true; fi
  done
}
trap cleanup EXIT

echo "== external real data (DSB 2018 image from the stardist wheel on PyPI; tests skip without it)"
"$VENV/bin/python" tools/fetch_external_data.py

echo "== pytest"
"$VENV/bin/python" -m pytest

echo "== wheel check"
"$VENV/bin/python" tools/check_wheel.py

echo "== docs"
NO_MKDOCS_2_WARNING=1 "$VENV/bin/mkdocs" build --strict --site-dir "$(mktemp -d)"

echo "== all checks passed"
