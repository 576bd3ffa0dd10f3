# cohortsync — PGXS build.
#
#   make                      build cohortsync.so
#   make install              install into the server found by pg_config
#   make installcheck         run the pg_regress suite (test/sql) against a running server
#   scripts/test              build, install into a throwaway copy of the server, run every test
#
# Every C file under src/ is one job of the extension; they are all linked into one module.
# Supported servers: PostgreSQL 15, 16, 17 and 18 (what differs between them: src/pg_compat.h).

EXTENSION   = cohortsync
MODULE_big  = cohortsync
OBJS        = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))
# sql/cohortsync.sql is the install script of the current version, kept by hand; it is
# installed as cohortsync--$(EXTVERSION).sql (built below). The upgrade scripts,
# cohortsync--<from>--<to>.sql, hold only what changed between two versions.
# test/t/005_install_equals_upgrade.pl checks that both build the same objects.
DATA_built  = sql/$(EXTENSION)--$(EXTVERSION).sql
DATA        = $(sort $(wildcard sql/$(EXTENSION)--*--*.sql))
EXTRA_CLEAN = sql/$(EXTENSION)--$(EXTVERSION).sql
PGFILEDESC  = "cohortsync - Mixpanel cohort sync for PostgreSQL"

# make installcheck: the pg_regress suite, test/sql/*.sql against test/expected/*.out, in
# pg_regress's own database (contrib_regression) of a running server. Each test creates
# the extension itself; the server need not preload the library.
REGRESS      = $(sort $(basename $(notdir $(wildcard test/sql/*.sql))))
REGRESS_OPTS = --inputdir=test

# The version has one home, default_version in the control file; the C code
# gets it as CS_VERSION (libcurl's User-Agent, PostgreSQL 18's module magic block).
EXTVERSION  = $(shell sed -n "s/^default_version *= *'\(.*\)'.*/\1/p" $(EXTENSION).control)

PG_CONFIG  ?= pg_config
PG_CPPFLAGS += -I$(srcdir)/src -DCS_VERSION=\"$(EXTVERSION)\"
SHLIB_LINK += -lcurl -lmicrohttpd

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

SUPPORTED_MAJORVERSIONS = 15 16 17 18
ifeq ($(filter $(MAJORVERSION),$(SUPPORTED_MAJORVERSIONS)),)
$(error cohortsync supports PostgreSQL $(firstword $(SUPPORTED_MAJORVERSIONS)) to $(lastword $(SUPPORTED_MAJORVERSIONS)), not $(MAJORVERSION) (the server of $(PG_CONFIG)))
endif

# a new default_version must reach the objects that carry it
$(OBJS): $(EXTENSION).control

sql/$(EXTENSION)--$(EXTVERSION).sql: sql/$(EXTENSION).sql $(EXTENSION).control
	cp $< $@

# The upgrade tests (test/sql/04_upgrade.sql, test/t/005_install_equals_upgrade.pl)
# start from the released 0.1.0, whose full install script is kept, frozen, in
# test/upgrade/ and is not installed by `make install`: nobody should install 0.1.0
# any more. This puts it next to the installed scripts of the server of PG_CONFIG;
# scripts/test does so in its throwaway installation, `make installcheck` needs it too.
UPGRADE_TEST_SCRIPTS = $(wildcard test/upgrade/$(EXTENSION)--*.sql)
.PHONY: install-upgrade-test
install-upgrade-test:
	$(INSTALL_DATA) $(addprefix $(srcdir)/, $(UPGRADE_TEST_SCRIPTS)) '$(DESTDIR)$(datadir)/extension/'
