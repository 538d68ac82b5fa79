#!/usr/bin/env bash
# Puts libtorch 2.11.0 (the version tch 0.24 binds) in a cache outside the repository and prints
# the directory to use as LIBTORCH on its last line of stdout. Idempotent: a complete cache is reused.
#
#   LIBTORCH=/path          an existing libtorch is respected (only checked, never modified)
#   LOSSLAB_CACHE=/path     cache root (default: $XDG_CACHE_HOME/losslab or ~/.cache/losslab)
#   LOSSLAB_LIBTORCH=cpu|cuda|auto   which build to provision (default auto: cuda when nvidia-smi
#                           finds a driver, cpu otherwise)
#
# cpu:  the PyPI torch==2.11.0 wheel's CPU libraries and headers, plus libcudart/libcupti from the
#       small nvidia-cuda-runtime / nvidia-cuda-cupti wheels (libtorch_cpu links them), ~550 MB.
# cuda: the full `pip install torch==2.11.0` (with its CUDA wheels) into a venv in the cache.
set -euo pipefail

TORCH_VERSION=2.11.0
CUDA_TOOLKIT=13.0.2
log() { printf 'libtorch: %s\n' "$*" >&2; }
die() { printf 'libtorch: error: %s\n' "$*" >&2; exit 1; }

check_layout() {
  local dir=$1
  [ -f "$dir/include/torch/csrc/api/include/torch/torch.h" ] || die "$dir has no include/torch/csrc/api/include/torch/torch.h (not a libtorch layout)"
  for f in libtorch_cpu.so libtorch.so libc10.so; do
    [ -f "$dir/lib/$f" ] || die "$dir/lib/$f is missing"
  done
  if [ -f "$dir/build-version" ]; then
    local v; v=$(cut -d+ -f1 <"$dir/build-version")
    [ "$v" = "$TORCH_VERSION" ] || die "$dir is libtorch $v; tch 0.24 needs $TORCH_VERSION"
  fi
  # tch is built with the C++11 ABI; the PyPI wheels use it since torch 2.7.
  if command -v nm >/dev/null 2>&1 && [ "$(nm -D --defined-only "$dir/lib/libc10.so" 2>/dev/null | grep -c __cxx11)" = 0 ]; then
    die "$dir/lib/libc10.so was not built with the C++11 ABI (_GLIBCXX_USE_CXX11_ABI=1), which tch needs"
  fi
}

if [ -n "${LIBTORCH:-}" ]; then
  log "using LIBTORCH=$LIBTORCH from the environment"
  check_layout "$LIBTORCH"
  echo "$LIBTORCH"
  exit 0
fi

cache=${LOSSLAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/losslab}
flavour=${LOSSLAB_LIBTORCH:-auto}
if [ "$flavour" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then flavour=cuda; else flavour=cpu; fi
fi
case "$flavour" in cpu|cuda) ;; *) die "LOSSLAB_LIBTORCH must be cpu, cuda or auto, got '$flavour'";; esac

dest="$cache/libtorch-$TORCH_VERSION-$flavour"
if [ -f "$dest/.complete" ]; then
  check_layout "$dest"
  log "cached at $dest"
  echo "$dest"
  exit 0
fi

command -v python3 >/dev/null || die "python3 with pip is needed to fetch libtorch from PyPI"
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

if [ "$flavour" = cpu ]; then
  log "downloading torch==$TORCH_VERSION wheel (~530 MB) and the CUDA runtime/CUPTI wheels from PyPI"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 -d "$tmp/whl" "torch==$TORCH_VERSION" \
    || die "pip could not download torch==$TORCH_VERSION"
  python3 -m pip download --quiet --only-binary=:all: -d "$tmp/whl" \
    "cuda-toolkit[cudart,cupti]==$CUDA_TOOLKIT" \
    || die "pip could not download cuda-toolkit[cudart,cupti]==$CUDA_TOOLKIT"
  log "unpacking the CPU libraries and headers"
  python3 - "$tmp/whl" "$tmp/out" <<'PY'
import pathlib, shutil, sys, zipfile
src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
(out / "lib").mkdir(parents=True)
keep = {"libtorch_cpu.so", "libtorch.so", "libc10.so", "libgomp.so.1", "libshm.so",
        "libtorch_global_deps.so", "libcudart.so.13", "libcupti.so.13"}
found = set()
for whl in sorted(src.glob("*.whl")):
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            name = info.filename
            base = name.rsplit("/", 1)[-1]
            if name.startswith("torch/include/") and not name.endswith("/"):
                target = out / name[len("torch/"):]
            elif base in keep and "/lib/" in name:
                target = out / "lib" / base
                found.add(base)
            elif name == "torch/version.py":
                for line in z.read(info).decode().splitlines():
                    if line.startswith("__version__"):
                        (out / "build-version").write_text(line.split("'")[1] + "\n")
                continue
            else:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as fi, open(target, "wb") as fo:
                shutil.copyfileobj(fi, fo)
missing = keep - found
if missing:
    sys.exit(f"libtorch: error: the wheels lack {sorted(missing)}")
PY
else
  log "installing torch==$TORCH_VERSION with its CUDA wheels into a venv (several GB)"
  python3 -m venv "$tmp/venv"
  "$tmp/venv/bin/python" -m pip install --quiet "torch==$TORCH_VERSION" \
    || die "pip could not install torch==$TORCH_VERSION"
  site=$("$tmp/venv/bin/python" -c 'import torch, os; print(os.path.dirname(torch.__file__))')
  mkdir -p "$tmp/out"
  mv "$tmp/venv" "$tmp/out/venv"
  site=${site/$tmp\/venv/$dest\/venv}
  ln -s "$site/include" "$tmp/out/include"
  ln -s "$site/lib" "$tmp/out/lib"
  echo "$TORCH_VERSION" >"$tmp/out/build-version"
  # The CUDA libraries libtorch_cuda.so needs live in site-packages/nvidia/*/lib.
  ls -d "$site"/../nvidia/*/lib 2>/dev/null | tr '\n' ':' >"$tmp/out/cuda-lib-path"
fi

[ "$flavour" = cuda ] || check_layout "$tmp/out"
rm -rf "$dest"
mv "$tmp/out" "$dest"
touch "$dest/.complete"
log "libtorch $TORCH_VERSION ($flavour) ready at $dest"
echo "$dest"
