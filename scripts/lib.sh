# shellcheck shell=bash
# Shared by scripts/demo, scripts/test and bench/: install what is missing, build,
# install into a throwaway copy of the server, and run throwaway clusters.
#
# PostgreSQL refuses to run as root. When these scripts run as root (CI does), the
# server and every client that touches it run as the unprivileged `postgres` OS user
# (created by Debian's postgresql package), in a private directory under /tmp,
# listening on a Unix socket only unless a script asks for loopback TCP.

set -euo pipefail

CS_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_MAJOR=${PG_MAJOR:-15}

# Debian packages the project needs, each named for what it brings (nothing is left to
# a package's "Recommends", which are not installed):
#   make gcc                                   the build
#   postgresql-N postgresql-server-dev-N       server, psql, pgbench, pg_dump; PGXS and the
#                                              TAP framework (PostgreSQL::Test::Cluster)
#   postgresql-N-pgtap                         the pgtap extension
#   libtap-parser-sourcehandler-pgtap-perl     pg_prove
#   perl libipc-run-perl                       prove, HTTP::Tiny, JSON::PP; IPC::Run
#   libcurl4-openssl-dev libmicrohttpd-dev     what the extension links with
#   python3 curl openssl ca-certificates       the stand-ins, HTTP clients, test certificates
#   bc                                         arithmetic in the benchmarks
CS_PACKAGES=(
  make gcc
  "postgresql-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR" "postgresql-$PG_MAJOR-pgtap"
  libtap-parser-sourcehandler-pgtap-perl perl libipc-run-perl
  libcurl4-openssl-dev libmicrohttpd-dev
  python3 curl openssl ca-certificates bc
)

# What the scripts and tests run, and the package each comes from. cs_check_tools
# looks for every one as the OS user that runs the tests, so that a tool missing from
# the list above fails loudly before anything runs instead of as one odd failure later.
CS_TOOLS=(
  "make make" "gcc gcc" "psql postgresql-client-$PG_MAJOR" "pgbench postgresql-client-$PG_MAJOR"
  "pg_prove libtap-parser-sourcehandler-pgtap-perl" "prove perl"
  "python3 python3" "curl curl" "openssl openssl" "timeout coreutils" "base64 coreutils"
  "awk mawk" "bc bc"
)
CS_PERL_MODULES=(
  "IPC::Run libipc-run-perl" "HTTP::Tiny perl" "JSON::PP perl" "Digest::MD5 perl"
  "Time::HiRes perl" "Test::More perl"
)
CS_PYTHON_MODULES=(ssl http.server http.client socketserver json base64 hashlib)

cs_log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

cs_install_deps() {
  local missing=() p
  for p in "${CS_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  cs_log "installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  # Debian's postgresql package creates and starts a "main" cluster; we never use it.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Is every tool, Perl module and Python module there for the OS user that runs the
# tests? Prints each one missing with the package that provides it, and sets
# CS_MISSING to how many are.
cs_check_tools() {
  local missing=0 entry tool pkg m
  for entry in "${CS_TOOLS[@]}"; do
    read -r tool pkg <<<"$entry"
    if ! cs_as_user sh -c "command -v $tool" >/dev/null 2>&1; then
      echo "MISSING: $tool (Debian package $pkg)" >&2; missing=$((missing + 1))
    fi
  done
  for entry in "${CS_PERL_MODULES[@]}"; do
    read -r m pkg <<<"$entry"
    if ! cs_as_user perl -M"$m" -e 1 >/dev/null 2>&1; then
      echo "MISSING: Perl module $m (Debian package $pkg)" >&2; missing=$((missing + 1))
    fi
  done
  for m in "${CS_PYTHON_MODULES[@]}"; do
    if ! cs_as_user python3 -c "import $m" >/dev/null 2>&1; then
      echo "MISSING: Python module $m (Debian package python3)" >&2; missing=$((missing + 1))
    fi
  done
  if [ ! -f "$("$(cs_pg_config)" --sharedir)/extension/pgtap.control" ]; then
    echo "MISSING: the pgtap extension (Debian package postgresql-$PG_MAJOR-pgtap)" >&2
    missing=$((missing + 1))
  fi
  if [ ! -f "$(dirname "$("$(cs_pg_config)" --pgxs)")/../test/perl/PostgreSQL/Test/Cluster.pm" ]; then
    echo "MISSING: PostgreSQL::Test::Cluster (Debian package postgresql-server-dev-$PG_MAJOR)" >&2
    missing=$((missing + 1))
  fi
  CS_MISSING=$missing
  [ "$missing" -eq 0 ]
}

# The server the extension is built against.
cs_pg_config() {
  if [ -x "/usr/lib/postgresql/$PG_MAJOR/bin/pg_config" ]; then
    echo "/usr/lib/postgresql/$PG_MAJOR/bin/pg_config"
  else
    command -v pg_config
  fi
}

CS_CFLAGS='-Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers'
cs_build() {
  cs_log "building (warnings are errors)"
  # Objects a plain `make` left behind were compiled without these warnings, and make
  # would keep them: rebuild everything when the flags (or the server) differ from the
  # last build's. (.build-flags is ignored by git.)
  local flags="$(cs_pg_config) $CS_CFLAGS"
  if [ "$(cat "$CS_TOP/.build-flags" 2>/dev/null)" != "$flags" ]; then
    make -s -C "$CS_TOP" PG_CONFIG="$(cs_pg_config)" clean >/dev/null
  fi
  make -s -C "$CS_TOP" PG_CONFIG="$(cs_pg_config)" PG_CFLAGS="$CS_CFLAGS" >/dev/null
  echo "$flags" >"$CS_TOP/.build-flags"
}

# The OS user that runs servers and clients.
cs_os_user() {
  if [ "$(id -u)" -ne 0 ]; then id -un; return; fi
  if ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
  echo postgres
}

# Run a command as that user, keeping the environment.
cs_as_user() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u "$CS_OS_USER" -- env PATH="$PATH" "$@"
  else
    "$@"
  fi
}

# A private work directory, owned by the OS user, removed at exit unless KEEP=1.
cs_workdir() {
  CS_OS_USER=$(cs_os_user)
  CS_WORK=$(mktemp -d /tmp/cohortsync.XXXXXX)
  chmod 755 "$CS_WORK"
  [ "$(id -u)" -eq 0 ] && chown "$CS_OS_USER" "$CS_WORK"
  trap cs_cleanup EXIT
  export CS_WORK CS_OS_USER
}

cs_cleanup() {
  local rc=$?
  if [ -n "${CS_PGDATA:-}" ] && [ -f "$CS_PGDATA/postmaster.pid" ]; then
    cs_as_user "$CS_BIN/pg_ctl" -D "$CS_PGDATA" -m immediate stop >/dev/null 2>&1 || true
  fi
  if [ "${KEEP:-0}" = 1 ] || [ $rc -ne 0 ] && [ "${CI:-}" != true ]; then
    echo "work directory kept: $CS_WORK" >&2
  else
    rm -rf "$CS_WORK"
  fi
  exit $rc
}

# A copy of the server with the extension installed into it, as PostgreSQL's own
# `make check` does: the system's installation is never touched, and the server
# finds its share and lib directories relative to its own binary.
cs_tmp_install() {
  local pgc; pgc=$(cs_pg_config)
  local bindir sharedir pkglibdir
  bindir=$("$pgc" --bindir); sharedir=$("$pgc" --sharedir); pkglibdir=$("$pgc" --pkglibdir)
  CS_INST=$CS_WORK/install
  mkdir -p "$CS_INST$bindir" "$(dirname "$CS_INST$sharedir")" "$(dirname "$CS_INST$pkglibdir")"
  cp -a "$bindir/." "$CS_INST$bindir/"
  cp -as "$sharedir" "$(dirname "$CS_INST$sharedir")/"
  [ -d "$CS_INST$pkglibdir" ] || cp -as "$pkglibdir" "$(dirname "$CS_INST$pkglibdir")/"
  CS_BIN=$CS_INST$bindir
  make -s -C "$CS_TOP" PG_CONFIG="$CS_BIN/pg_config" install >/dev/null
  CS_PGXS_DIR=$(dirname "$("$CS_BIN/pg_config" --pgxs)")/..
  export CS_INST CS_BIN CS_PGXS_DIR
  export PATH="$CS_BIN:$PATH"
}

# Start a throwaway cluster. Extra postgresql.conf lines come on stdin.
cs_start_cluster() {
  CS_PGDATA=$CS_WORK/data
  CS_SOCK=$CS_WORK/sock
  CS_PORT=${CS_PORT:-5432}
  mkdir -p "$CS_SOCK"
  [ "$(id -u)" -eq 0 ] && chown "$CS_OS_USER" "$CS_SOCK"
  cs_as_user initdb -D "$CS_PGDATA" -U postgres -A trust --no-sync -E UTF8 --locale=C.UTF-8 >/dev/null
  {
    echo "listen_addresses = ''"
    echo "unix_socket_directories = '$CS_SOCK'"
    echo "port = $CS_PORT"
    echo "shared_preload_libraries = 'cohortsync'"
    echo "fsync = off"
    echo "log_line_prefix = '%m [%p] %q%a '"
    cat
  } | cs_as_user tee -a "$CS_PGDATA/postgresql.conf" >/dev/null
  cs_as_user pg_ctl -D "$CS_PGDATA" -l "$CS_WORK/server.log" -w start >/dev/null
  export CS_PGDATA CS_SOCK CS_PORT
  export PGHOST=$CS_SOCK PGPORT=$CS_PORT PGUSER=postgres
}

cs_stop_cluster() {
  cs_as_user pg_ctl -D "$CS_PGDATA" -m fast -w stop >/dev/null
}

# A free TCP port on the loopback interface.
cs_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cs_psql() { cs_as_user psql -X -v ON_ERROR_STOP=1 -q "$@"; }
