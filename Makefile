# The front door. Everything real happens in CMake; this file only names the
# few things a person types.
#
#   make            build the library, tests, examples and benchmarks
#   make test       build, then run the whole test suite
#   make demo       build, then run the classic example programs
#   make bench      build, then run the benchmarks (mproc vs Python vs the floor)
#   make install PREFIX=/usr/local
#   make sanitize   the test suite built with AddressSanitizer + UBSan

BUILD   ?= build
PREFIX  ?= /usr/local
JOBS    ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE   ?= cmake
CTEST   ?= ctest

.PHONY: all build test demo bench install sanitize clean

all: build

$(BUILD)/CMakeCache.txt:
	$(CMAKE) -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: $(BUILD)/CMakeCache.txt
	$(CMAKE) --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && $(CTEST) --output-on-failure -j $(JOBS)

demo: build
	@for ex in $$(cat $(BUILD)/examples/demo-list); do \
	  echo "=== $$ex"; $(BUILD)/examples/$$ex || exit 1; done

bench: build
	python3 bench/run.py $(BUILD)/bench

install: build
	$(CMAKE) --install $(BUILD) --prefix $(PREFIX)

sanitize:
	MPROC_TEST_TIMEOUT_MULT=4 $(CMAKE) -S . -B $(BUILD)-sanitize \
	  -DCMAKE_BUILD_TYPE=Debug -DMPROC_SANITIZE=ON -DMPROC_BENCH=OFF
	$(CMAKE) --build $(BUILD)-sanitize -j $(JOBS)
	cd $(BUILD)-sanitize && MPROC_TEST_TIMEOUT_MULT=4 $(CTEST) --output-on-failure -j $(JOBS)

clean:
	rm -rf $(BUILD) $(BUILD)-sanitize
