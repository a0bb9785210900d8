# Sourced by tests/env/postgres/{install,start,stop}: paths shared by the PostgreSQL scripts.
# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

PG_MAJOR=15
PG_BIN="${CRYPTOVIZ_PG_BIN:-/usr/lib/postgresql/$PG_MAJOR/bin}"
PG_USER=postgres                      # system user created by the Debian package; postgres refuses to run as root
PG_STATE="$CRYPTOVIZ_STATE/postgres"
PG_DATA="$PG_STATE/data"
PG_SOCK="$PG_STATE/run"               # unix socket dir (the script's own superuser connection uses it, trust auth)
PG_LOG="$PG_STATE/postgres.log"

# as_pg CMD...: run CMD as the postgres system user (setpriv execs in place: no extra process, signals go straight through).
as_pg() { setpriv --reuid="$PG_USER" --regid="$PG_USER" --init-groups --reset-env -- "$@"; }
