#!/bin/sh
# Builds the Python package (python/) into a virtualenv of Debian's python3 and runs its
# tests with pytest: captures of the deployed sender played by qsock-replay, Python
# receiving from qtisocketsink and sending to qtisocketsrc in gst-launch-1.0, zero-copy,
# release, threads, 10,000 buffers, the type stubs. scripts/test runs it after `cargo build --lib
# --bins`, whose plugin and qsock-replay (target/debug) the tests use.
set -eu
cd "$(dirname "$0")/.."
[ -d "$HOME/.cargo/bin" ] && PATH="$HOME/.cargo/bin:$PATH"
venv="$PWD/target/python-venv"
# Debian's python3 (python3-venv, python3-gi: scripts/setup); the venv sees its gi.
[ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "maturin>=1.5,<2" "numpy>=1.21" "pytest>=8,<10" "mypy==2.4.1"
# A dev build in target/python: never in target/debug or target/release, whose shared
# libraries GStreamer loads as plugins (GST_PLUGIN_PATH) and would choke on this one.
PATH="$venv/bin:$PATH" CARGO_TARGET_DIR="$PWD/target/python" MATURIN_PEP517_ARGS="--profile dev --locked" \
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps ./python
# The binding's crate (a workspace of its own): the house style and lints, as for the
# library; then its pure Rust tests (video format layouts), whose binary links libpython
# (libpython3-dev: scripts/setup).
(
    cd python
    export PYO3_PYTHON="$venv/bin/python" CARGO_TARGET_DIR="$PWD/../target/python"
    cargo fmt --check
    cargo clippy --locked --all-targets --quiet -- -D warnings
    cargo test --locked --lib --quiet
)
status=0
GST_PLUGIN_PATH="$PWD/target/debug" "$venv/bin/python" -m pytest python/tests -p no:cacheprovider || status=$?
# pytest exits 5 when it collected no test: a failure here, never a silent pass.
[ "$status" -ne 5 ] || echo "python/test.sh: pytest collected no test" >&2
exit "$status"
