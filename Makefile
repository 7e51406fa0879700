# eav: durable task execution on PostgreSQL.  See README.md.
#
#   make            build into build/ (SANITIZE=1: ASan+UBSan into build/asan)
#   make run        install missing packages, build, start eavd on ./var
#   make stop       stop the private cluster under ./var
#   make check      the whole test suite (sanitized) on a private cluster
#   make check-fm   docs/03-failure-modes.md against the tests and the last
#                   make check run (CHECK_LOG=...xml for another run's log)
#   make valgrind   the worker and supervisor suites under valgrind
#   make bench      the benchmarks, appended to bench/RESULTS.md (20-30 min)
#   make bench-http HTTP tool calls/s against the test far side (about 30 s)
#   make soak-ci    the chaos soak of CI (about 4 minutes; SEEDS=all: 3 seeds)
#   make soak       the long chaos soak (about 25 minutes; not in CI)
#   make install    PREFIX=/usr/local DESTDIR=

ifeq ($(origin CC),default)
CC	= gcc
endif
PREFIX	?= /usr/local
VERSION	:= $(shell cat VERSION)

ifeq ($(SANITIZE),1)
BUILD	?= build/asan
OPT	= -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
	  -fno-sanitize-recover=undefined
LDSAN	= -fsanitize=address,undefined
else
BUILD	?= build
OPT	= -O2 -g -D_FORTIFY_SOURCE=2 -fstack-protector-strong
LDSAN	=
endif

WARN	= -Wall -Wextra -Werror -Wstrict-prototypes -Wmissing-prototypes \
	  -Wshadow -Wpointer-arith -Wcast-qual -Wsign-compare -Wformat=2 \
	  -Wformat-security -Wno-missing-field-initializers
PKGS	= libpq libevent libevent_openssl openssl jansson inih libsystemd
CFLAGS	+= -std=c11 -D_GNU_SOURCE -DEAV_VERSION='"$(VERSION)"' $(OPT) $(WARN) \
	   -fPIE -MMD -MP -Icommon -Iinject \
	   $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDFLAGS	+= -pie -Wl,-z,relro,-z,now -Wl,--as-needed $(LDSAN)
LDLIBS	= $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CHECK_CFLAGS = $(shell pkg-config --cflags check 2>/dev/null)
CHECK_LIBS = $(shell pkg-config --libs check 2>/dev/null)

COMMON_SRCS =	common/clock.c \
		common/reconnect.c \
		common/config.c \
		common/db.c \
		common/killswitch.c \
		common/log.c \
		common/migrate.c \
		common/spawn.c \
		common/toolproc.c \
		common/procrun.c \
		common/tls.c \
		common/xalloc.c \
		inject/inject.c \
		inject/inject_db.c
SUPERVISOR_SRCS = supervisor/main.c \
		supervisor/child.c \
		supervisor/notify.c \
		supervisor/policy.c \
		supervisor/reconcile.c \
		supervisor/sdb.c \
		supervisor/seal.c
WORKER_SRCS =	worker/main.c \
		worker/conn.c \
		worker/cycle.c \
		worker/tools.c \
		worker/tool_exec.c \
		worker/tool_http.c \
		worker/tool_mcp.c \
		worker/jscan.c
PRODUCER_SRCS =	producer/main.c \
		producer/ingest.c \
		producer/schedule.c \
		producer/classify.c \
		producer/watcher.c \
		producer/probe.c \
		producer/probe_http.c
CTL_SRCS =	ctl/main.c \
		ctl/cmd_task.c \
		ctl/cmd_status.c \
		ctl/cmd_lab.c \
		ctl/cmd_rehearse.c \
		ctl/cmd_queue.c \
		ctl/cmd_tools.c \
		ctl/cmd_kill.c \
		ctl/cmd_owner.c \
		ctl/cmd_budget.c \
		ctl/cmd_redaction.c \
		ctl/cmd_approval.c \
		ctl/cmd_audit.c \
		ctl/cmd_diagnose.c \
		ctl/cmd_schedule.c \
		ctl/cmd_watcher.c \
		ctl/cmd_events.c \
		ctl/table.c
BENCH_SRCS =	bench/eavbench.c
SOAK_SRCS =	tests/chaos/main.c \
		tests/chaos/client.c \
		tests/chaos/nemesis.c \
		tests/chaos/check.c \
		tests/chaos/util.c
TEST_SRCS ?=	tests/check_main.c \
		tests/harness.c \
		tests/tooltest.c \
		tests/check_config.c \
		tests/check_schema.c \
		tests/check_transitions.c \
		tests/check_claim.c \
		tests/check_producer.c \
		tests/check_supervisor.c \
		tests/check_crash.c \
		tests/check_ctl.c \
		tests/check_inject.c \
		tests/check_exec.c \
		tests/check_http.c \
		tests/check_mcp.c \
		tests/check_kill.c \
		tests/check_governance.c \
		tests/check_audit.c \
		tests/check_redact.c \
		tests/check_diagnose.c \
		tests/check_schedule.c \
		tests/check_ownership.c \
		tests/check_watcher.c \
		tests/check_events.c

SQL	= $(sort $(wildcard sql/[0-9][0-9][0-9][0-9]_*.sql))
GEN	= $(BUILD)/gen/sql_embed.c

obj	= $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
LIB	= $(BUILD)/libeavcommon.a
BINS	= $(BUILD)/bin/eavd $(BUILD)/bin/eav-worker $(BUILD)/bin/eav-producer \
	  $(BUILD)/bin/eavctl
TESTBIN	= $(BUILD)/bin/check_eav
# Far sides the tests call, built without sanitizers: they are not under
# test, and an address-space limit must not stop them from starting.
FAR_BINS = $(BUILD)/bin/recorder \
	   $(BUILD)/bin/httpd \
	   $(BUILD)/bin/mcpd
FAR_PKGS = libpq jansson
HTTPD_PKGS = libevent libevent_openssl openssl jansson

.PHONY: all run stop check check-build check-fm valgrind install uninstall \
	clean deps lint bench bench-http
all: $(BINS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(CFLAGS) -c -o $@ $<

$(GEN): $(SQL) scripts/embed-sql.sh
	@mkdir -p $(dir $@)
	scripts/embed-sql.sh $@ $(SQL)

$(BUILD)/obj/gen/sql_embed.o: $(GEN)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(CFLAGS) -c -o $@ $<

$(LIB): $(call obj,$(COMMON_SRCS)) $(BUILD)/obj/gen/sql_embed.o
	$(AR) rcs $@ $^

$(BUILD)/bin/eavd: $(call obj,$(SUPERVISOR_SRCS)) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/bin/eav-worker: $(call obj,$(WORKER_SRCS)) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/bin/eav-producer: $(call obj,$(PRODUCER_SRCS)) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/bin/eavctl: $(call obj,$(CTL_SRCS)) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/bin/eavbench: $(call obj,$(BENCH_SRCS)) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Links libpq alone, on purpose (see the file).
$(BUILD)/bin/pqfloor: $(call obj,bench/pqfloor.c)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ -lpq

$(BUILD)/bin/eavsoak: $(call obj,$(SOAK_SRCS)) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Worker modules the tests call directly (unit tests beside the suites).
TEST_UNITS =	worker/jscan.c

$(call obj,$(TEST_SRCS)): CFLAGS += $(CHECK_CFLAGS) -Itests
$(TESTBIN): $(call obj,$(TEST_SRCS)) $(call obj,$(TEST_UNITS)) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(LDLIBS)

$(BUILD)/bin/recorder $(BUILD)/bin/mcpd: $(BUILD)/bin/%: tests/far/%.c \
    tests/far/farlib.c tests/far/farlib.h
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_GNU_SOURCE -O2 -g $(WARN) \
	    $(shell pkg-config --cflags $(FAR_PKGS) 2>/dev/null) -o $@ $< \
	    tests/far/farlib.c \
	    $(shell pkg-config --libs $(FAR_PKGS) 2>/dev/null)

$(BUILD)/bin/httpd: tests/far/httpd.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_GNU_SOURCE -O2 -g $(WARN) \
	    $(shell pkg-config --cflags $(HTTPD_PKGS) 2>/dev/null) -o $@ $< \
	    $(shell pkg-config --libs $(HTTPD_PKGS) 2>/dev/null)

deps:
	@scripts/deps.sh

run: deps
	@$(MAKE) --no-print-directory all
	@scripts/run.sh

stop:
	@scripts/cluster.sh stop

# eavbench too, so a change that breaks it fails the tests, not make bench.
check-build: $(BINS) $(TESTBIN) $(FAR_BINS) $(BUILD)/bin/eavbench \
    $(BUILD)/bin/pqfloor

check:
	@scripts/deps.sh check
	@$(MAKE) --no-print-directory SANITIZE=1 check-build
	@tests/run.sh build/asan

CHECK_LOG ?= build/asan/check-results.xml
check-fm:
	@scripts/check-fm.sh $(CHECK_LOG)

valgrind:
	@scripts/deps.sh valgrind
	@$(MAKE) --no-print-directory all
	@tests/valgrind.sh build

lint:
	@scripts/lint.sh

# The http figure calls the test far side, built like the daemons (not
# sanitized) into build/bin.
bench:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory all $(BUILD)/bin/eavbench \
	    $(BUILD)/bin/httpd $(BUILD)/bin/pqfloor
	@bench/run.sh

bench-http:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory all $(BUILD)/bin/eavbench \
	    $(BUILD)/bin/httpd
	@bench/http.sh

# SEEDS: empty (one of three fixed seeds, picked by the commit), all, or
# a number.
.PHONY: soak soak-ci
soak-ci:
	@scripts/deps.sh
	@$(MAKE) --no-print-directory all $(BUILD)/bin/eavsoak
	@tests/chaos/soak.sh ci $(SEEDS)

soak:
	@scripts/deps.sh
	@$(MAKE) --no-print-directory all $(BUILD)/bin/eavsoak
	@tests/chaos/soak.sh long $(SEEDS)

install: $(BINS)
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/bin \
	    $(DESTDIR)$(PREFIX)/lib/eav $(DESTDIR)/etc/eav
	install -m 755 $(BUILD)/bin/eavd $(DESTDIR)$(PREFIX)/sbin/eavd
	install -m 755 $(BUILD)/bin/eav-worker $(BUILD)/bin/eav-producer \
	    $(DESTDIR)$(PREFIX)/lib/eav/
	install -m 755 $(BUILD)/bin/eavctl $(DESTDIR)$(PREFIX)/bin/eavctl
	install -m 644 eav.conf.example $(DESTDIR)/etc/eav/eav.conf.example

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/sbin/eavd $(DESTDIR)$(PREFIX)/bin/eavctl
	rm -rf $(DESTDIR)$(PREFIX)/lib/eav

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)
