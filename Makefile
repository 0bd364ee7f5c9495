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

DEB_PACKAGES = gcc make pkg-config python3 curl valgrind \
               libcurl4-openssl-dev libssl-dev \
               lua5.4 liblua5.4-dev luajit2 libluajit2-5.1-dev \
               lua5.3 liblua5.3-dev lua-cjson lua-busted lua-socket luarocks \
               nginx-light libnginx-mod-http-lua clang libclang-rt-14-dev

MODULES = $(foreach l,$(LUAS),build/$(l)/appcenter/core.so)
BUSTED = /usr/bin/busted
LUA_PATH_DEV = lua/?.lua;lua/?/init.lua;;

SANITIZE_CFLAGS = -O1 -g -fno-omit-frame-pointer \
                  -fsanitize=address,undefined -fno-sanitize-recover=undefined
lua_libs = $(shell pkg-config --libs $(call lua_pc,$(1)) 2>/dev/null)

.PHONY: all deps test demo memcheck sanitize install uninstall clean

all: $(MODULES)

# Installs what is missing, once per change of this Makefile.
build/.deps: Makefile
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | \
	    grep -q '^install ok installed$$' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
	      || exit 1; \
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
	  LUA_PATH='$(LUA_PATH_DEV)' LUA_CPATH="build/$$l/?.so;;" \
	    $$l $(BUSTED) -o json > build/results-$$l.json; \
	done; \
	lua5.4 tools/test-summary.lua build/results-*.json

# A host linked with the sanitizers runs the suite, so that their
# runtimes stay out of the child processes the specs start. Any report
# makes the run fail.
sanitize: $(foreach l,$(LUAS),build/sanitize-$(l)/appcenter/core.so \
                              build/sanitize-$(l)/host)
	@rm -f build/results-*.json
	@for l in $(LUAS); do \
	  echo "== busted under $$l with AddressSanitizer and UBSan"; \
	  ASAN_OPTIONS=detect_leaks=1:exitcode=23 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tools/lsan.supp \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  LUA_PATH='$(LUA_PATH_DEV)' LUA_CPATH="build/sanitize-$$l/?.so;;" \
	    build/sanitize-$$l/host $(BUSTED) -o json \
	      > build/results-$$l.json || exit 1; \
	done; \
	lua5.4 tools/test-summary.lua build/results-*.json

demo: all
	@lua5.4 tools/demo.lua

memcheck: build/lua5.4/appcenter/core.so
	LUA_PATH='$(LUA_PATH_DEV)' LUA_CPATH='build/lua5.4/?.so;;' \
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
	install -d $(DESTDIR)$(BINDIR)
	install -m 755 tools/appcenter-credential $(DESTDIR)$(BINDIR)/

uninstall:
	@for abi in 5.1 5.3 5.4; do \
	  rm -rf $(DESTDIR)$(PREFIX)/lib/lua/$$abi/appcenter \
	         $(DESTDIR)$(PREFIX)/share/lua/$$abi/appcenter; \
	done
	rm -f $(DESTDIR)$(BINDIR)/appcenter-credential

clean:
	rm -rf build

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
