# Sourced by the other scripts: makes sure the tools the project needs are
# here. A fresh machine of this project's kind has cargo through rustup;
# the rest comes from Debian's packages, installed here when missing:
#   protobuf-compiler  protoc, needed to build the etcd client (etcd-client)
#   etcd-server        etcd, for the registry tests   (only for the tests)
#   nats-server        nats-server, for the broker tests (only for the tests)
#   python3-venv       for the gRPC interop tests' venv with grpcio (only for the tests)
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "cargo is not installed: install Rust with rustup (https://rustup.rs) first" >&2
    exit 1
  fi
fi

micro_need_packages_force() {
  echo "==> installing Debian packages: $*"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo=sudo
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

micro_need_packages() {
  local missing=()
  for pair in "$@"; do
    local bin=${pair%%:*} pkg=${pair##*:}
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  micro_need_packages_force "${missing[@]}"
}
