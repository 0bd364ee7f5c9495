# lua-appcenter: build, test, demo, install.
#
#   make                  build the C module for every Lua in LUAS
#   make LUAS=lua5.3      build for one Lua (lua5.1 ABI: luajit)
#   make test             run every spec under each Lua in LUAS
#   make demo             a credential from the local emulator
#   make memcheck         the Lua 5.4 spec suite under valgrind
#   make install          install modules and tool under PREFIX
#
# Missing Debian packages are installed when run as root; otherwise the
# exact apt-get line is printed.

LUAS ?= lua5.4 luajit
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
WERROR ?=

CC ?= cc
CFLAGS ?= -O2 -g
WARNINGS = -Wall -Wextra -pedantic -Wmissing-prototypes -Wstrict-prototypes \
           -Wshadow -Wcast-qual -Wpointer-arith -Wwrite-strings -Wformat=2 \
           -Wundef -Wvla -Wconversion -Wno-sign-conversion $(if $(WERROR),-Werror)
BASE_CFLAGS = -std=c99 -fPIC -fvisibility=hidden -D_POSIX_C_SOURCE=200809L \
              $(WARNINGS)
LIBS = $(shell pkg-config --libs libcurl libcrypto 2>/dev/null || echo -lcurl -lcrypto) -pthread

SRCS = src/buf.c src/request.c src/sign.c src/region.c src/error.c \
       src/response.c src/transport.c src/multi.c src/sign_lua.c \
       src/obs.c src/upload.c src/core.c
HDRS = $(wildcard src/*.h)

# Per-Lua settings: pkg-config name, include flags, install dirs.
lua_pc = $(if $(filter luajit,$(1)),luajit,$(1))
lua_cflags = $(shell pkg-config --cflags $(call lua_pc,$(1)) 2>/dev/null) \
             $(if $(filter luajit,$(1)),-DAC_LUAJIT)

DEB_PACKAGES = gcc make pkg-config python3 curl valgrind strace \
               libcurl4-openssl-dev libssl-dev \
               lua5.4 liblua5.4-dev luajit2 libluajit2-5.1-dev \
               lua5.3 liblua5.3-dev lua-cjson lua-busted lua-socket luarocks \
               nginx-light libnginx-mod-http-lua clang libclang-rt-14-dev

MODULES = $(foreach l,$(LUAS),build/$(l)/appcenter/core.so)
BUSTED = /usr/bin/busted
# The specs reach servers on 127.0.0.1 only, and a proxy variable from the
# caller's shell would send their requests to that proxy. The proxy specs
# set their own variables in child processes.
TEST_ENV = env -u http_proxy -u HTTP_PROXY -u https_proxy -u HTTPS_PROXY \
  -u all_proxy -u ALL_PROXY -u no_proxy -u NO_PROXY
LUA_PATH_DEV = lua/?.lua;lua/?/init.lua;;

SANITIZE_CFLAGS = -O1 -g -fno-omit-frame-pointer \
                  -fsanitize=address,undefined -fno-sanitize-recover=undefined
# intercept_tls_get_addr=0: the libasan of GCC 12 reads a dynamic TLS
# block whose address is 16 modulo 4096 as a glibc 2.19 TLS header, and
# LeakSanitizer's tracer then crashes with signal 11 at exit. Where that
# block lands depends on the run, so without this the leak check fails
# now and then after every test has passed.
SANITIZE_ASAN_OPTIONS = detect_leaks=1:exitcode=23:intercept_tls_get_addr=0
SANITIZE_ENV = ASAN_OPTIONS=$(SANITIZE_ASAN_OPTIONS) \
  LSAN_OPTIONS=suppressions=$(CURDIR)/tools/lsan.supp \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
lua_libs = $(shell pkg-config --libs $(call lua_pc,$(1)) 2>/dev/null)

.PHONY: all deps test demo memcheck sanitize install uninstall clean

all: $(MODULES)

# Installs what is missing, once per change of this Makefile. A
# policy-rc.d that exits 101, put in place only when none exists, keeps
# the packages' services from starting during the install: nginx-light
# would otherwise start the system's nginx on port 80, which the tests
# do not use.
POLICY_RC = /usr/sbin/policy-rc.d

build/.deps: Makefile
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | \
	    grep -q '^install ok installed$$' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    made_policy=""; \
	    if [ ! -e $(POLICY_RC) ]; then \
	      printf '#!/bin/sh\nexit 101\n' > $(POLICY_RC) \
	        && chmod 755 $(POLICY_RC) && made_policy=1; \
	    fi; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	    status=$$?; \
	    if [ -n "$$made_policy" ]; then rm -f $(POLICY_RC); fi; \
	    [ $$status = 0 ] || exit 1; \
	  else \
	    echo "missing Debian packages; run:"; \
	    echo "  sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi
	@mkdir -p build && touch $@

deps: build/.deps

build/sanitize-%/appcenter/core.so: $(SRCS) $(HDRS) build/.deps
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) $(SANITIZE_CFLAGS) $(call lua_cflags,$*) -shared \
	  -o $@ $(SRCS) $(LIBS) $(LDFLAGS)

build/sanitize-%/host: tools/sanitize-host.c build/.deps
	@mkdir -p $(dir $@)
	$(CC) $(SANITIZE_CFLAGS) $(call lua_cflags,$*) -o $@ $< \
	  $(call lua_libs,$*) -lm

build/%/appcenter/core.so: $(SRCS) $(HDRS) build/.deps
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(call lua_cflags,$*) -shared \
	  -o $@ $(SRCS) $(LIBS) $(LDFLAGS)

test: all
	@rm -f build/results-*.json
	@for l in $(LUAS); do \
	  echo "== busted under $$l"; \
	  $(TEST_ENV) LUA_PATH='$(LUA_PATH_DEV)' LUA_CPATH="build/$$l/?.so;;" \
	    $$l $(BUSTED) -o json > build/results-$$l.json; \
	done; \
	lua5.4 tools/test-summary.lua build/results-*.json

# A host linked with the sanitizers runs the suite, so that their
# runtimes stay out of the child processes the specs start. Any report
# makes the run fail. The command-line tool and nginx specs load the
# plain builds, so those are built too.
sanitize: $(MODULES) \
          $(foreach l,$(LUAS),build/sanitize-$(l)/appcenter/core.so \
                              build/sanitize-$(l)/host)
	@rm -f build/results-*.json
	@status=0; for l in $(LUAS); do \
	  echo "== busted under $$l with AddressSanitizer and UBSan"; \
	  $(TEST_ENV) $(SANITIZE_ENV) \
	  APPCENTER_TEST_LUA="env ASAN_OPTIONS=detect_leaks=0 $(CURDIR)/build/sanitize-$$l/host" \
	  LUA_PATH='$(LUA_PATH_DEV)' LUA_CPATH="build/sanitize-$$l/?.so;;" \
	    build/sanitize-$$l/host $(BUSTED) -o json \
	      > build/results-$$l.json || status=1; \
	done; \
	lua5.4 tools/test-summary.lua build/results-*.json && exit $$status

demo: all
	@lua5.4 tools/demo.lua

memcheck: build/lua5.4/appcenter/core.so
	$(TEST_ENV) LUA_PATH='$(LUA_PATH_DEV)' LUA_CPATH='build/lua5.4/?.so;;' \
	  valgrind --error-exitcode=3 --leak-check=full \
	    --errors-for-leak-kinds=definite,indirect --track-fds=no \
	    --suppressions=tools/valgrind.supp \
	    lua5.4 $(BUSTED) -o utfTerminal

install: all
	@for l in $(LUAS); do \
	  [ "$$l" = luajit ] && abi=5.1 || abi=$${l#lua}; \
	  install -d $(DESTDIR)$(PREFIX)/lib/lua/$$abi/appcenter \
	             $(DESTDIR)$(PREFIX)/share/lua/$$abi/appcenter; \
	  install -m 755 build/$$l/appcenter/core.so \
	    $(DESTDIR)$(PREFIX)/lib/lua/$$abi/appcenter/core.so; \
	  install -m 644 lua/appcenter/*.lua \
	    $(DESTDIR)$(PREFIX)/share/lua/$$abi/appcenter/; \
	done
	@case " $(LUAS) " in \
	*" lua5.4 "*) \
	  install -d $(DESTDIR)$(BINDIR) && \
	  install -m 755 tools/appcenter-credential $(DESTDIR)$(BINDIR)/ ;; \
	*) echo "not installing appcenter-credential: it runs on Lua 5.4;" \
	     "add lua5.4 to LUAS" ;; \
	esac

uninstall:
	@for abi in 5.1 5.3 5.4; do \
	  rm -rf $(DESTDIR)$(PREFIX)/lib/lua/$$abi/appcenter \
	         $(DESTDIR)$(PREFIX)/share/lua/$$abi/appcenter; \
	done
	rm -f $(DESTDIR)$(BINDIR)/appcenter-credential

# luarocks make compiles in the checkout: its objects and module go too.
clean:
	rm -rf build appcenter/core.so src/*.o
	rmdir appcenter 2>/dev/null || true

# ---------------------------------------------------------------------
# Robustness checks
#
#   make fuzz      each libFuzzer target in fuzz/ for FUZZ_SECONDS
#   make threads   tests/threads.c, then again under ThreadSanitizer
#   make soak      SOAK_CALLS calls on one client; RSS growth under 1 MiB
#   make oom       every entry point with the k-th Lua allocation failing

FUZZ_TARGETS = response request sign obs
FUZZ_SECONDS ?= 60
FUZZ_RSS_LIMIT_MB ?= 2048
FUZZ_CC ?= clang
FUZZ_CFLAGS = -std=c99 -D_POSIX_C_SOURCE=200809L $(WARNINGS) -g -O1 \
              -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
              -fno-sanitize-recover=undefined
# The src/ files each target links; fuzz_response.c includes transport.c.
fuzz_srcs_response = src/buf.c src/error.c src/response.c
fuzz_srcs_request = src/buf.c src/request.c
fuzz_srcs_sign = src/buf.c src/sign.c
fuzz_srcs_obs = src/buf.c src/obs.c

.PHONY: fuzz threads soak oom

build/fuzz/fuzz_%: fuzz/fuzz_%.c fuzz/fuzz.h $(SRCS) $(HDRS) build/.deps
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(call lua_cflags,lua5.4) -o $@ $< \
	  $(fuzz_srcs_$*) $(LIBS) $(call lua_libs,lua5.4) -lm

# New inputs go to build/fuzz/corpus-*, so the seeds in fuzz/corpus stay
# as committed. A crash, a leak, a timeout or going over the RSS limit
# ends the run with the input saved under build/fuzz/artifacts.
fuzz: $(foreach t,$(FUZZ_TARGETS),build/fuzz/fuzz_$(t))
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p build/fuzz/corpus-$$t build/fuzz/artifacts; \
	  dict=""; [ -f fuzz/$$t.dict ] && dict="-dict=fuzz/$$t.dict"; \
	  echo "== fuzz_$$t for $(FUZZ_SECONDS) s"; \
	  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    build/fuzz/fuzz_$$t $$dict -max_total_time=$(FUZZ_SECONDS) \
	      -rss_limit_mb=$(FUZZ_RSS_LIMIT_MB) -detect_leaks=1 -timeout=10 \
	      -max_len=65536 -print_final_stats=1 \
	      -artifact_prefix=build/fuzz/artifacts/$$t- \
	      build/fuzz/corpus-$$t fuzz/corpus/$$t \
	      > build/fuzz/$$t.log 2>&1 \
	    || { tail -n 60 build/fuzz/$$t.log; \
	         echo "fuzz_$$t failed; the input is in build/fuzz/artifacts"; \
	         exit 1; }; \
	  grep -E '^stat::(number_of_executed_units|peak_rss_mb)' \
	    build/fuzz/$$t.log | tr '\n' ' '; echo; \
	done

# tests/threads.c with the normal build, then the module and the program
# built with ThreadSanitizer (clang), where any report fails the run.
THREADS_CFLAGS = -std=c99 -D_POSIX_C_SOURCE=200809L $(WARNINGS)
TSAN_CFLAGS = -O1 -g -fno-omit-frame-pointer -fsanitize=thread

build/threads/threads: tests/threads.c build/.deps
	@mkdir -p $(dir $@)
	$(CC) $(THREADS_CFLAGS) $(CFLAGS) $(call lua_cflags,lua5.4) -o $@ $< \
	  $(call lua_libs,lua5.4) -pthread -lm

build/threads/tsan/appcenter/core.so: $(SRCS) $(HDRS) build/.deps
	@mkdir -p $(dir $@)
	clang $(BASE_CFLAGS) $(TSAN_CFLAGS) $(call lua_cflags,lua5.4) -shared \
	  -o $@ $(SRCS) $(LIBS) $(LDFLAGS)

build/threads/tsan/threads: tests/threads.c build/.deps
	@mkdir -p $(dir $@)
	clang $(THREADS_CFLAGS) $(TSAN_CFLAGS) $(call lua_cflags,lua5.4) -o $@ \
	  $< $(call lua_libs,lua5.4) -pthread -lm

threads: build/lua5.4/appcenter/core.so build/threads/threads \
         build/threads/tsan/appcenter/core.so build/threads/tsan/threads
	@echo "== threads"
	LUA_CPATH='build/lua5.4/?.so;;' build/threads/threads 8 200
	@echo "== threads under ThreadSanitizer"
	TSAN_OPTIONS=halt_on_error=1:exitcode=66:second_deadlock_stack=1 \
	  LUA_CPATH='build/threads/tsan/?.so;;' build/threads/tsan/threads 8 200

# One client, SOAK_CALLS calls to nginx on 127.0.0.1, under each Lua.
SOAK_CALLS ?= 100000

soak: all
	@for l in $(LUAS); do \
	  echo "== soak under $$l"; \
	  LUA_PATH='$(LUA_PATH_DEV)' LUA_CPATH="build/$$l/?.so;;" \
	    $$l bench/soak.lua $(SOAK_CALLS) || exit 1; \
	done

# tests/oom.lua on tests/oom.c, a Lua 5.4 host whose allocator fails
# the k-th allocation, for k = 1, 2, ... over every public entry point,
# with AddressSanitizer, UBSan and LeakSanitizer (about 30 s). Any
# finding or sanitizer report fails the run. OOM_ARGS passes ENTRY,
# MODE, K_FIRST and K_LAST to the script (see its header).
# fast_unwind_on_malloc=0 gives whole leak stacks through cjson.so,
# which has no frame pointers.
OOM_ARGS ?=

build/sanitize-lua5.4/oom: tests/oom.c build/.deps
	@mkdir -p $(dir $@)
	$(CC) -std=c99 -D_POSIX_C_SOURCE=200809L $(WARNINGS) $(SANITIZE_CFLAGS) \
	  $(call lua_cflags,lua5.4) -o $@ $< $(call lua_libs,lua5.4) -lm

oom: build/sanitize-lua5.4/appcenter/core.so build/sanitize-lua5.4/oom
	$(TEST_ENV) $(SANITIZE_ENV) \
	  ASAN_OPTIONS=$(SANITIZE_ASAN_OPTIONS):fast_unwind_on_malloc=0 \
	  LUA_CPATH='build/sanitize-lua5.4/?.so;;' \
	    build/sanitize-lua5.4/oom tests/oom.lua $(OOM_ARGS)

# make bench: appcenter.core against its peers and plain libcurl, with
# nginx and the emulator on 127.0.0.1 (bench/run.py, about 3 minutes).
# BENCH_REQUESTS and BENCH_ROUNDS set requests per process and rounds;
# BENCH_ARGS passes further options, e.g. --profile. See BENCHMARKS.md.
BENCH_REQUESTS ?=
BENCH_ROUNDS ?=
BENCH_ARGS ?=

.PHONY: bench

bench: all
	python3 bench/run.py $(if $(BENCH_REQUESTS),--requests $(BENCH_REQUESTS)) \
	  $(if $(BENCH_ROUNDS),--rounds $(BENCH_ROUNDS)) $(BENCH_ARGS)
