#!/usr/bin/env bash
# The wheel folder the Containerfile installs from, offline (pip install --no-index --find-links):
# imgclf-serve (built from deploy/slim/MODULES of this tree) and every wheel it depends on, for the Python that
# runs this script. Run it with the Python of the image (PYTHON=python3.11): binary wheels (onnxruntime, numpy,
# pillow, httptools, uvloop, pydantic-core) are made for one Python version and platform.
#
#   deploy/build-wheels.sh [WHEEL_DIR [PIP_WHEEL_OPTION...]]        (default: deploy/wheels)
#
# Options after the folder go to pip wheel: to rebuild imgclf-serve offline against wheels already there,
#   deploy/build-wheels.sh deploy/wheels --no-index --find-links deploy/wheels --no-build-isolation
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/deploy/wheels}"
shift || true
python="${PYTHON:-python3}"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp "$root/deploy/slim/pyproject.toml" "$stage/"
grep -v '^\s*\(#\|$\)' "$root/deploy/slim/MODULES" | while read -r f; do
    mkdir -p "$stage/src/$(dirname "$f")"
    cp "$root/src/$f" "$stage/src/$f"
done

mkdir -p "$out"
# --prefer-binary: released wheels over building sdists (nothing is compiled for the image)
"$python" -m pip wheel --quiet --prefer-binary --wheel-dir "$out" "$@" "$stage"
ls "$out"
