# Entry points; each sets up libtorch itself (scripts/libtorch.sh, cached outside the repo).
SHELL := /bin/bash

.PHONY: test run sweep libtorch bench bench-compare

## Run every check CI runs.
test:
	bash scripts/test.sh

## The main job: the Distribution-Balanced loss on Reuters-21578; prints the result table.
run:
	source scripts/env.sh && cargo build --release -p loss-lab && \
	target/release/losslab train configs/reuters/db.toml --out runs/db

## The paper's table: nine losses, three seeds each.
sweep:
	source scripts/env.sh && cargo build --release -p loss-lab && \
	target/release/losslab sweep configs/reuters/paper.toml --out runs/paper

## Provision libtorch 2.11.0 and print its directory.
libtorch:
	bash scripts/libtorch.sh

## Ours against the PyTorch reference in one run, same machine and thread count (THREADS=N,
## default every core): a Markdown table of forward+backward medians, peak memory and results.
## Installs torch==2.11.0 and numpy into $LOSSLAB_CACHE/pyenv (default ~/.cache/losslab) if
## missing. The environment (OMP_WAIT_POLICY, ...) is passed to both sides alike.
bench-compare:
	source scripts/env.sh && \
	venv="$${LOSSLAB_CACHE:-$$HOME/.cache/losslab}/pyenv" && \
	if ! "$$venv/bin/python" -c 'import numpy, torch; assert torch.__version__.split("+")[0] == "2.11.0"' 2>/dev/null; then \
	  echo "bench-compare: installing torch==2.11.0 and numpy into $$venv" >&2 && \
	  python3 -m venv "$$venv" && \
	  "$$venv/bin/python" -m pip install --quiet torch==2.11.0 numpy; \
	fi && \
	cargo run --release --quiet --example bench_compare --features tch,multilabel,dbnet -- \
	  --python "$$venv/bin/python" --threads "$${THREADS:-$$(nproc)}"
