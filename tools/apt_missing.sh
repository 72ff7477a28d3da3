# tools/apt_missing.sh - sourced by tools/setup.sh and tools/test.sh:
#   apt_missing [--no-recommends] WHO PACKAGE...
# installs (apt-get, through sudo when not root) those of the Debian packages
# that are not installed yet, saying which; nothing when all are.
apt_missing() {
  local opts=()
  if [ "$1" = --no-recommends ]; then
    opts=(--no-install-recommends)
    shift
  fi
  local who=$1
  shift
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  echo "$who: installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${opts[@]}" "${missing[@]}" >/dev/null
}
