# shellcheck shell=bash
# Helpers shared by scripts/*: logging, installing Debian packages, PATH set-up.
# Source it (`source scripts/lib.sh`); it defines functions and extends PATH only.

# Messages go to stderr so that a script's stdout stays machine-readable.
log() { printf '%s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# Runs a command as root: directly when we are root (CI), else through
# non-interactive sudo (there is no stdin to type a password into).
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    die "need root to run: $*"
  fi
}

# Installs Debian packages, running `apt-get update` at most once per run
# (the marker is exported so that child scripts do not update again).
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* by hand"
  if [[ -z ${CONVEYOR_APT_UPDATED:-} ]]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    export CONVEYOR_APT_UPDATED=1
  fi
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# Puts a directory at the front of PATH unless it is already on it or absent.
path_prepend() {
  [[ -d $1 ]] || return 0
  case ":$PATH:" in
    *":$1:"*) ;;
    *) PATH="$1:$PATH" ;;
  esac
  export PATH
}

# Where rustup and the Go tarball install by default, in case the caller's
# environment (CI, cron, sudo) did not put them on PATH.
path_prepend /usr/local/go/bin
path_prepend "${CARGO_HOME:-${HOME:-/root}/.cargo}/bin"
