# Sourced by the other scripts: makes sure the tools the project needs are here.
# A fresh machine of this project's kind has cargo through rustup; anything
# else the tests need is installed here, not assumed.
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "cargo is not installed: install Rust with rustup (https://rustup.rs) first" >&2
    exit 1
  fi
fi
