# Sourced by the Makefile's recipes: provisions libtorch (once, cached outside the repository)
# and exports what tch's build needs.
LIBTORCH=$(bash "$(dirname "${BASH_SOURCE[0]}")/libtorch.sh") || exit 1
export LIBTORCH
# Its CUDA build (the full torch wheel in a venv) keeps the CUDA libraries beside it.
if [ -f "$LIBTORCH/cuda-lib-path" ]; then
  export LD_LIBRARY_PATH="$(cat "$LIBTORCH/cuda-lib-path")${LD_LIBRARY_PATH:-}"
fi
