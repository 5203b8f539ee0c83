# The setup contract: `make demo` and `make test` work on a fresh clone (they install
# libtorch into ./libtorch first when it is missing; see scripts/setup-libtorch.sh).
CARGO ?= cargo
DEMO_OUT ?= demo-out

.PHONY: setup build test demo clean-demo

setup:
	@scripts/setup-libtorch.sh

build: setup
	$(CARGO) build --release --bins

test: setup
	$(CARGO) test --release

demo: build
	scripts/demo.sh $(DEMO_OUT)

clean-demo:
	rm -rf $(DEMO_OUT)
