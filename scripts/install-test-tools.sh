#!/usr/bin/env bash
# Installs, from the distribution's packages, the programs outside Go that
# some tests run, when they are missing:
#   redis-server             the benchmark's Redis client is tested against it
#   systemd-socket-activate  machqd is tested under real socket activation
#   systemd-nspawn           the systemd units run in a container booting systemd
#   python3                  the example Python client is tested against machqd
#   pip, setuptools, wheel   the Python client is built and installed as a package
#   man (man-db)             the generated man pages are rendered
#   tmux                     machq top is driven in a real terminal
#   prometheus               a real Prometheus scrapes machqd --metrics
# Without them those tests skip, unless MACHQ_TEST_REQUIRE_TOOLS=1 (CI).
set -euo pipefail
cd "$(dirname "$0")"
./install-redis.sh
missing=()
command -v systemd-socket-activate >/dev/null 2>&1 || missing+=(systemd)
command -v systemd-nspawn >/dev/null 2>&1 || missing+=(systemd-container)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# Some python3 on PATH must build a wheel offline, as the test looks for
# one. The modules are looked up, not imported: under some Python
# installations importing pip and then setuptools fails.
python_builds() {
  local py
  for py in $(type -ap python3); do
    "$py" -c 'import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ("pip", "setuptools", "wheel")))' >/dev/null 2>&1 && return 0
  done
  return 1
}
python_builds || missing+=(python3-pip)
man --version >/dev/null 2>&1 || missing+=(man-db)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "missing ${missing[*]} and this is not a Debian-like system; install them with your package manager" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
echo "== installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
