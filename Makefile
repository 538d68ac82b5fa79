# Entry points; each sets up libtorch itself (scripts/libtorch.sh, cached outside the repo).
SHELL := /bin/bash

.PHONY: test run libtorch bench bench-compare

## Run every check CI runs.
test:
	bash scripts/test.sh

## Provision libtorch 2.11.0 and print its directory.
libtorch:
	bash scripts/libtorch.sh
