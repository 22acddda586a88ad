#!/usr/bin/env bash
# Installs the published Nacos clients that the Nacos front end is proven with, each from its
# own registry, into throwaway folders under $DISTRO_NACOS_CLIENTS_DIR (default
# ~/.cache/distro-nacos-clients), and builds the Rust client harness. Idempotent: a client
# already there at its pinned version is left alone, and the Rust build is incremental, so a
# second run takes a few seconds. .ci/run calls it before the tests.
#
# Layout (the Nacos client integration test finds everything here):
#   node/node_modules/nacos            npm `nacos` (HTTP v1)                 -> node_client.js
#   py-v2/venv/bin/python              PyPI nacos-sdk-python 3.x (gRPC, v2)  -> python_v2.py
#   py-v1/venv/bin/python              PyPI nacos-sdk-python 2.0.11 (HTTP v1 NacosClient)
#                                                                            -> python_v1.py
#   rust-target/debug/nacos-client-rust  crate nacos-sdk (gRPC), rust/ here
#
# nacos-sdk-python 3.x ships only its v2 API; `nacos.NacosClient` (the v1 HTTP client) last
# shipped in 2.0.x, whose latest release is 2.0.11 — hence the second venv.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${DISTRO_NACOS_CLIENTS_DIR:-$HOME/.cache/distro-nacos-clients}
mkdir -p "$dir"

# Pinned versions: what the front end is proven against. Bump them here, deliberately.
NODE_NACOS_VERSION=2.6.3
PY_V2_VERSION=3.2.0
PY_V1_VERSION=2.0.11

started=$SECONDS

# --- npm: nacos (Node.js, HTTP v1) ---------------------------------------------------------
node_dir=$dir/node
have=$(node -e "try{console.log(require('$node_dir/node_modules/nacos/package.json').version)}catch(e){}" 2>/dev/null || true)
if [[ "$have" != "$NODE_NACOS_VERSION" ]]; then
    echo "-- npm: installing nacos@$NODE_NACOS_VERSION"
    mkdir -p "$node_dir"
    [[ -f "$node_dir/package.json" ]] || echo '{"name":"distro-nacos-clients","private":true}' >"$node_dir/package.json"
    (cd "$node_dir" && npm install --no-audit --no-fund --loglevel=error "nacos@$NODE_NACOS_VERSION")
fi
echo "-- npm nacos $(node -e "console.log(require('$node_dir/node_modules/nacos/package.json').version)")"

# --- PyPI: nacos-sdk-python, one venv per API ---------------------------------------------
py_install() { # folder version
    local venv=$dir/$1/venv version=$2 have
    have=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("nacos-sdk-python"))' 2>/dev/null || true)
    if [[ "$have" != "$version" ]]; then
        echo "-- pip: installing nacos-sdk-python==$version into $venv"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "nacos-sdk-python==$version"
    fi
    echo "-- $1 nacos-sdk-python $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("nacos-sdk-python"))')"
}
py_install py-v2 "$PY_V2_VERSION"
py_install py-v1 "$PY_V1_VERSION"

# --- crates.io: nacos-sdk (Rust, gRPC), the harness crate in rust/ -------------------------
# Its own workspace and target folder: the repository's build never sees its dependencies.
echo "-- cargo: building the Rust client harness (nacos-sdk, pinned in rust/Cargo.lock)"
CARGO_TARGET_DIR=$dir/rust-target cargo build --locked --quiet --manifest-path "$here/rust/Cargo.toml"
ls -l "$dir/rust-target/debug/nacos-client-rust" | awk '{print "-- rust harness " $NF}'

echo "-- Nacos clients ready in $dir ($((SECONDS - started)) s)"
