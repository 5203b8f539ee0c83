# The setup contract: `make demo` and `make test` work on a fresh clone (they install
# libtorch into ./libtorch first when it is missing; see scripts/setup-libtorch.sh).
CARGO ?= cargo
DEMO_OUT ?= demo-out

.PHONY: setup build test demo study clean-demo

setup:
	@scripts/setup-libtorch.sh

build: setup
	$(CARGO) build --release --bins

# One libtorch thread per test process: tests run in parallel, and oversubscribed OpenMP
# threads make small-op code (L-BFGS, k-means, tiny models) orders of magnitude slower.
test: setup
	OMP_NUM_THREADS=1 $(CARGO) test --release
	$(CARGO) run --release --example analyze_checkpoint -- fixtures/check/ckpt fixtures/check/data/manifest.tsv target/example-out
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --lib

demo: build
	scripts/demo.sh $(DEMO_OUT)

# The sharing spectrum at 3 seeds with intervals (not part of CI; see scripts/study.sh).
study: build
	scripts/study.sh $(DEMO_OUT)

clean-demo:
	rm -rf $(DEMO_OUT)
