# Sourced by bin/autodeco and bin/test: build the project's .venv from the locks, then activate it.
# The environment is exactly requirements/lock.txt plus requirements/lock-deepspeed.txt (every
# package pinned, dependencies included; DeepSpeed is pure Python on CPU and lets CI run the
# ZeRO-3 test): it is rebuilt from scratch whenever a lock, pyproject.toml or these scripts change.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${AUTODECO_VENV:-$root/.venv}"
lock="${AUTODECO_LOCK:-$root/requirements/lock.txt}"
deepspeed_lock="${AUTODECO_DEEPSPEED_LOCK:-$root/requirements/lock-deepspeed.txt}"
source "$root/bin/_versions.sh"
stamp="$venv/.autodeco-installed"
want="$(cat "$lock" "$deepspeed_lock" "$root/pyproject.toml" "$root/bin/_bootstrap.sh" "$root/bin/_versions.sh" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "autodeco: building $venv from ${lock#"$root"/} (first run, or the lock changed: a few minutes)" >&2
  python3 -m venv --clear "$venv"
  _pip() { "$venv/bin/python" -m pip --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location" >&2 || true; }; return "${PIPESTATUS[0]}"; }
  _pip install --quiet "pip==$PIP_VERSION"
  _pip install --quiet "torch==$TORCH_VERSION"
  # Exactly the locked set: --no-deps, so nothing outside the lock can come in.
  _pip install --quiet --no-deps -r "$lock"
  _pip install --quiet --no-deps -r "$deepspeed_lock"
  _pip install --quiet --no-deps --no-build-isolation -e "$root"
  # stdout stays for results: importing DeepSpeed prints a notice there
  "$venv/bin/python" -c "import torch, transformers, accelerate, deepspeed, autodeco" >&2 || { echo "autodeco: setup failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
# DeepSpeed JIT-compiles its CPU communication op (deepspeed_shm_comm) on the first launch without
# a GPU: about a minute. The build belongs to this environment's DeepSpeed sources (ninja rebuilds
# it when they are reinstalled, and another venv sharing ~/.cache would rebuild it back and forth),
# so it is kept in the venv and reused until the environment is rebuilt.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$venv/torch_extensions}"
# shellcheck disable=SC1091
source "$venv/bin/activate"
