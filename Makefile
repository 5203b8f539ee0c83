# The setup contract: `make demo` and `make test` work on a fresh clone (they install
# libtorch into ./libtorch first when it is missing; see scripts/setup-libtorch.sh).
CARGO ?= cargo
DEMO_OUT ?= demo-out

.PHONY: setup build lint test demo figures study clean-demo

setup:
	@scripts/setup-libtorch.sh

build: setup
	$(CARGO) build --release --bins

# The gates CI runs before the tests: rustfmt (rustfmt.toml) and clippy with warnings as errors.
lint: setup
	@$(CARGO) fmt --version >/dev/null 2>&1 || { echo "lint: rustfmt is missing (rustup component add rustfmt)" >&2; exit 1; }
	@$(CARGO) clippy --version >/dev/null 2>&1 || { echo "lint: clippy is missing (rustup component add clippy)" >&2; exit 1; }
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings

# One libtorch thread per test process: tests run in parallel, and oversubscribed OpenMP
# threads make small-op code (L-BFGS, k-means, tiny models) orders of magnitude slower.
# scripts/setup-chromium.sh installs Debian's Chromium for the explorer's browser test (or
# records why it cannot; the test then skips, and the last line of the log says so).
test: setup
	@scripts/setup-chromium.sh
	@# The tests' scratch directories live in target/test-tmp (TMPDIR), emptied before each run
	@# and removed after a passing one: a failed run's scratch stays for inspection until the
	@# next run; nothing accumulates in /tmp.
	rm -rf target/test-tmp && mkdir -p target/test-tmp
	TMPDIR=$(CURDIR)/target/test-tmp OMP_NUM_THREADS=1 $(CARGO) test --release
	rm -rf target/test-tmp
	$(CARGO) run --release --example analyze_checkpoint -- fixtures/check/ckpt fixtures/check/data/manifest.tsv target/example-out
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --lib
	@if [ -f target/chromium-unavailable.txt ]; then echo "NOTE: the explorer browser test was SKIPPED: $$(cat target/chromium-unavailable.txt)"; fi

demo: build
	scripts/demo.sh $(DEMO_OUT)

# Re-renders the committed figures/ from the runs `make demo` left in $(DEMO_OUT), and the docs'
# generated tables (make demo itself writes only into $(DEMO_OUT)).
figures: build
	target/release/msclip-analyze figures --recipes analyses --out figures
	target/release/msclip-analyze sync-docs

# The sharing spectrum and the transfer study at 8 seeds (not part of CI; see scripts/study.sh).
study: build
	scripts/study.sh $(DEMO_OUT)
	target/release/msclip-analyze sync-docs

clean-demo:
	rm -rf $(DEMO_OUT)
