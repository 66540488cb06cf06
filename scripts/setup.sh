#!/usr/bin/env bash
# Set up nerfsim in .venv/ (idempotent): Python packages, and the system libraries that the
# mesh renderer and the embedded service use when this runs as root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
    echo "nerfsim setup: creating .venv with $python_bin"
    "$python_bin" -m venv .venv
fi

# Reinstall only when the dependency list changed.
stamp=.venv/.nerfsim-installed
wanted=$(cat pyproject.toml client/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "nerfsim setup: installing Python packages (first time: about 5 minutes)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    .venv/bin/python -m pip install -q -e client  # the Python SDK (nerfsim-client)
    echo "$wanted" > "$stamp"
fi

# mitsuba's fast llvm_ad_rgb variant needs LLVM >= 16 (Debian 12 ships 15, which crashes it);
# without it the mesh renderer falls back to the ~4x slower scalar_rgb variant.
if ! ls /usr/lib/x86_64-linux-gnu/libLLVM.so.19* >/dev/null 2>&1 && ! ls /usr/lib/llvm-1[6-9]/lib/libLLVM* >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "nerfsim setup: installing libllvm19 for the mesh renderer"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libllvm19 >/dev/null
    else
        echo "nerfsim setup: warning: libllvm19 missing (not root): mesh rendering uses the slower scalar_rgb variant" >&2
    fi
fi

# The dashboard's browser test drives Debian's chromium through Debian's chromedriver (no
# browser download at test time); without them that one test is skipped.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "nerfsim setup: installing chromium and chromium-driver for the dashboard's browser test"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
            || echo "nerfsim setup: warning: could not install chromium: the dashboard's browser test is skipped" >&2
    else
        echo "nerfsim setup: warning: chromium missing (not root): the dashboard's browser test is skipped" >&2
    fi
fi
