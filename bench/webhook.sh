#!/usr/bin/env bash
# Webhook benchmark (issue #11, "Measure it"), on a throwaway cluster with the listener
# on 127.0.0.1, printing one table:
#
#   A full sync of MEMBERS members posted over HTTP exactly as Mixpanel posts it
#   (sequential 1000-member pages of one session, Basic auth, keep-alive), while OTHERS
#   clients post 100-member diffs of other cohorts and one client polls /healthz every
#   20 ms. Per-page answer times; the time from the last page's answer to the swap being
#   visible (session 'completed', or member_count = MEMBERS: right for a swap made while
#   the last page is answered and for one made afterwards by a background worker);
#   /healthz and the other cohorts' answer times during the swap; the listener's
#   processes' peak memory. One row per value of cohortsync.http_workers (WORKERS).
#
#   bench/webhook.sh                     100,000 members, http_workers 1 and 4
#   BENCH_1M=1 bench/webhook.sh          1,000,000 members
#   BENCH_10M=1 bench/webhook.sh         10,000,000 members
#   WORKERS="4" OTHERS=3 bench/webhook.sh
#
# The client is bench/webhook_client.py (Python 3, standard library only).
source "$(dirname "$0")/../scripts/lib.sh"

MEMBERS=100000
[ "${BENCH_1M:-0}" = 1 ] && MEMBERS=1000000
[ "${BENCH_10M:-0}" = 1 ] && MEMBERS=10000000
WORKERS=${WORKERS:-1 4}
OTHERS=${OTHERS:-3}

cs_install_deps
cs_build
cs_workdir
cs_tmp_install
HTTP_PORT=$(cs_free_port)
first=${WORKERS%% *}
cs_start_cluster <<EOF
fsync = on
shared_buffers = 1GB
max_wal_size = 16GB
checkpoint_timeout = 30min
cohortsync.http_listen = '127.0.0.1:$HTTP_PORT'
cohortsync.http_workers = $first
cohortsync.http_log_level = 'debug1'
EOF
export PGDATABASE=postgres
cs_psql -c "CREATE EXTENSION cohortsync"
cs_psql >/dev/null <<'EOF'
BEGIN;
SET LOCAL log_statement = 'none';
SELECT cohortsync.add_webhook_user('bench', 'bench-webhook-password');
COMMIT;
EOF

# wait until the listener answers with every worker connected
wait_listener() {
  local w=$1
  for _ in $(seq 300); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP_PORT/healthz")" = 200 ] &&
       [ "$(cs_as_user psql -X -qAt -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'cohortsync http listener'")" = "$w" ]; then
      return 0
    fi
    sleep 0.1
  done
  echo "the listener did not come up with $w workers" >&2
  exit 1
}

header=--header
for w in $WORKERS; do
  if [ "$w" != "$first" ]; then
    echo "cohortsync.http_workers = $w" | cs_as_user tee -a "$CS_PGDATA/postgresql.conf" >/dev/null
    cs_as_user pg_ctl -D "$CS_PGDATA" -l "$CS_WORK/server.log" -w restart >/dev/null
  fi
  wait_listener "$w"
  cs_log "http_workers = $w: full sync of $MEMBERS members over HTTP, $OTHERS other clients, /healthz every 20 ms"
  cs_as_user env PGHOST="$PGHOST" PGPORT="$PGPORT" PGUSER="$PGUSER" PGDATABASE=postgres \
    python3 "$CS_TOP/bench/webhook_client.py" --port "$HTTP_PORT" --auth bench:bench-webhook-password \
    --members "$MEMBERS" --cohort "full-w$w" --others "$OTHERS" --label "$w" $header >>"$CS_WORK/webhook.txt"
  header=
  # untimed: the next run starts from tables of the same size
  cs_psql -c "DELETE FROM cohortsync.cohorts WHERE project_id = 'bench'" -c "VACUUM cohortsync.members" \
          -c "VACUUM cohortsync.staged_members"
done

echo
echo "Webhook: full sync of $MEMBERS members over HTTP, $OTHERS clients posting other cohorts, /healthz every 20 ms"
echo
cat "$CS_WORK/webhook.txt"
