# Sourced by scripts/run and scripts/test: installs what is missing and activates the environment.
#  - Debian packages for the C++ core (only those not installed yet),
#  - a virtual environment in .venv with tokenlane installed editable, with its dev extras,
#  - TOKENLANE_VOCAB_DIR pointing at ../shared/vocab when that verified copy is there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# chromium: Debian's browser, driven by Playwright in the example app's browser tests (tests/e2e).
# clang-14 + libclang-rt-14-dev: libFuzzer and ThreadSanitizer builds of the core (scripts/test).
# redis-server: the Redis backend's tests start their own on a free port.
APT_PACKAGES=(nlohmann-json3-dev libsqlitecpp-dev libfmt-dev catch2 chromium clang-14 libclang-rt-14-dev redis-server
              ${TOKENLANE_EXTRA_APT:-})
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
echo "setup: pip install -e .[${TOKENLANE_EXTRAS:-dev}]"
python -m pip install -q --disable-pip-version-check -e ".[${TOKENLANE_EXTRAS:-dev}]" 2>&1 \
  | grep -v "^WARNING: Location" || true
python -c "import tokenlane" # fail here, loudly, if the build did not produce the module

if [ -z "${TOKENLANE_VOCAB_DIR:-}" ] && [ -d ../shared/vocab ]; then
  TOKENLANE_VOCAB_DIR="$(cd ../shared/vocab && pwd)"
  export TOKENLANE_VOCAB_DIR
fi
if command -v ninja >/dev/null 2>&1; then export CMAKE_GENERATOR=${CMAKE_GENERATOR:-Ninja}; fi
