# Entry points; each sets up libtorch itself (scripts/libtorch.sh, cached outside the repo).
SHELL := /bin/bash

.PHONY: test run sweep libtorch

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
