# The front door. Everything real happens in CMake; this file only names the
# few things a person types.
#
#   make            build the library, tests, examples and benchmarks
#   make test       build, then run the whole test suite
#   make demo       build, then run the classic example programs
#   make bench      build, then run the benchmarks (mproc vs Python vs the floor)
#   make install PREFIX=/usr/local
#   make sanitize   the test suite built with AddressSanitizer + UBSan
#   make tsan       thread-heavy cases under ThreadSanitizer (tests/check_tsan.sh)
#   make memcheck   single-process cases under valgrind (tests/check_memcheck.sh)
#   make lint       cppcheck + clang --analyze, no finding (tests/check_static.sh)
#   make torture    kills, stops, limits and volume for ~6 minutes; one table,
#                   also written to $(BUILD)/torture-report.md; then every
#                   fuzz target for 150 s (12-14 minutes in all)
#   make torture-short  the same rows, smaller (1-2 minutes, CI)
#   make fuzz       every libFuzzer target for 5 minutes (clang; fuzz/run.sh)
#   make fuzz-short the same, 30 s a target (CI)
#   make fault-plants  breaks one error path per fault class in a copy of
#                   the tree and checks the fault-injection case catches it

BUILD   ?= build
PREFIX  ?= /usr/local
JOBS    ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE   ?= cmake
CTEST   ?= ctest

.PHONY: all build test demo bench install sanitize tsan memcheck lint torture torture-short fuzz fuzz-short fault-plants clean

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

torture: build
	$(BUILD)/tests/mproc_torture --report $(BUILD)/torture-report.md $(TORTURE_ARGS)
	FUZZ_BUILD=$(BUILD)-fuzz FUZZ_SECONDS=150 sh fuzz/run.sh long

torture-short: build
	$(BUILD)/tests/mproc_torture --short --report $(BUILD)/torture-short-report.md $(TORTURE_ARGS)

fuzz:
	FUZZ_BUILD=$(BUILD)-fuzz sh fuzz/run.sh long

fuzz-short:
	FUZZ_BUILD=$(BUILD)-fuzz sh fuzz/run.sh short

fault-plants:
	python3 tests/fault_plants.py .

tsan:
	JOBS=$(JOBS) bash tests/check_tsan.sh $(BUILD)-tsan

memcheck:
	JOBS=$(JOBS) bash tests/check_memcheck.sh $(BUILD)-memcheck

lint:
	JOBS=$(JOBS) bash tests/check_static.sh

clean:
	rm -rf $(BUILD) $(BUILD)-sanitize $(BUILD)-tsan $(BUILD)-memcheck
