# Crashes under load (issue #6, "Faults"):
#
# 1. kill -9 of the delivery worker, again and again, each time with requests
#    in flight, while it drains a backlog of 100,000 changes (200,000 records):
#    every change arrives, and the duplicates are counted and bounded.
# 2. an immediate shutdown of the server while clients ingest pages (add,
#    remove, multi-page full syncs) and the worker delivers: after the restart
#    no page is half-applied, the history and the counts agree, no outbox row
#    was lost, and delivery resumes by itself.
use strict;
use warnings;

use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use CsDelivery;

my $batch_size = 1000;
my $max_inflight = 4;
my $kills = 5;
my $changes = 100_000;

my $ct = start_standin();
# the TAP framework turns restart_after_crash off; a crash must restart here
my $node = new_delivery_node('backlog', $ct,
	conf => [
		'restart_after_crash = on',
		"cohortsync.batch_size = $batch_size",
		"cohortsync.max_inflight = $max_inflight",
		# crash recovery replays little: the backlog is checkpointed before the kills
		"checkpoint_timeout = '1h'",
		"max_wal_size = '4GB'" ]);

sub sql { return $node->safe_psql('postgres', $_[0]); }

#------------------------------------------------------------------------------
# 1. repeated kill -9 during a 100,000-change backlog
#------------------------------------------------------------------------------
# Queued while the destination is paused; one page of 1000 members per
# transaction. The members carry only their ids: the point is counting.
sql(q{
CREATE FUNCTION public.lean_page(g integer) RETURNS jsonb LANGUAGE sql AS $$
  SELECT cohortsync.ingest(jsonb_build_object('action', 'add_members', 'parameters', jsonb_build_object(
    'mixpanel_project_id', 1001, 'mixpanel_cohort_id', '70', 'mixpanel_cohort_name', 'Backlog',
    'mixpanel_session_id', 'b' || g,
    'members', (SELECT jsonb_agg(jsonb_build_object('mixpanel_distinct_id', 'm' || i,
                                                    '$CleverTap_user_id', 'ct-m' || i))
                  FROM generate_series(g * 1000 + 1, g * 1000 + 1000) i)))) $$;
});
sql("SELECT cohortsync.pause_destination('ct')");
my $t0 = time();
# ANALYZE once the tables are no longer empty: ingest keeps its prepared plans for
# the session, and plans made while members was empty made every later page cost
# more with the size of the cohort (0.3 s per page at 5,000 members, 6.7 s at
# 35,000, on the test machine). In service autovacuum's ANALYZE replaces them;
# within a test it does not run in time.
sql("SELECT lean_page(0); ANALYZE cohortsync.members, cohortsync.membership_changes, cohortsync.outbox;");
sql(join('', map { "SELECT lean_page($_);\n" } 1 .. $changes / 1000 - 1));
note sprintf('backlog: %d changes queued in %.1f s', $changes, time() - $t0);
is(sql("SELECT count(*) FROM cohortsync.outbox"), 2 * $changes, 'backlog: 200,000 records queued');
sql("CHECKPOINT");

# slow answers, so that requests are in flight whenever we look
standin_post($ct, '/_control', { delay_ms => 300 });
sql("SELECT cohortsync.resume_destination('ct')");

my $killed = 0;
my $mid_batch = 0;
for my $k (1 .. $kills)
{
	# a worker that has been sending for a moment, with requests in flight
	my $pid;
	wait_until(60, sub { $pid = worker_pid($node); $pid ne '' });
	usleep(500_000);
	$pid = worker_pid($node);
	last if $pid eq '';
	# kill right after seeing requests in flight: a second look (or a query)
	# in between can fall into the gap between two batches on a busy machine
	my $in_flight = 0;
	last unless wait_until(30,
		sub { $in_flight = standin_get($ct, '/_stats')->{in_flight}; $in_flight >= 1 });
	kill 'KILL', $pid;
	$killed++;
	$mid_batch++ if $in_flight >= 1;
	note "kill $k: worker $pid killed with $in_flight requests in flight at the stand-in";
	# the postmaster reinitialises and a new worker starts
	wait_until(60, sub { my $p = worker_pid($node); $p ne '' && $p ne $pid });
}
is($killed, $kills, "kill -9: the worker was killed $kills times");
is($mid_batch, $killed, 'kill -9: each time with requests in flight');
cmp_ok(sql("SELECT count(*) FROM cohortsync.outbox"), '>', 0,
	'kill -9: the backlog was not yet drained at the last kill');

standin_post($ct, '/_control', { delay_ms => 0 });
ok(outbox_empty($node, 180), 'kill -9: the outbox drains');
my $tally = standin_tally($ct);
my @missing;
for my $i (1 .. $changes)
{
	push @missing, "ct-m$i event" unless $tally->{"ct-m$i event Added"};
	push @missing, "ct-m$i profile" unless $tally->{"ct-m$i profile \$add"};
}
is(scalar(@missing), 0, 'kill -9: every change was delivered')
  or diag "missing: @missing[0 .. ($#missing < 9 ? $#missing : 9)]";
my ($received, $distinct) = (0, scalar(keys %$tally));
$received += $_ for values %$tally;
my $dups = $received - $distinct;
is($distinct, 2 * $changes, 'kill -9: nothing else arrived');
# A killed worker can only send again what was in flight when it died: at most
# max_inflight requests of batch_size records each. Everything else either had
# its outcome committed (deleted from the outbox) or was never sent.
my $bound = $killed * $max_inflight * $batch_size;
cmp_ok($dups, '<=', $bound, "kill -9: duplicates ($dups) <= kills x max_inflight x batch_size ($bound)");
is(sql("SELECT count(*) FROM cohortsync.failed_records"), '0', 'kill -9: no record failed');
is(sql("SELECT delivered FROM cohortsync.destination_status"), 2 * $changes,
	'kill -9: the status view counts each record once');
# a killed worker's leases lived in its memory: each successor starts afresh and
# re-sends what was in flight (counted above), started once per kill by the postmaster
my @starts = slurp_file($node->logfile) =~ /cohortsync delivery worker started in database/g;
cmp_ok(scalar(@starts), '>', $killed, 'kill -9: a new worker started after every kill');
diag sprintf('kill -9 during a backlog: %d changes (%d records), %d kills (each with requests in flight), '
	  . '%d records delivered, %d distinct, %d duplicates (bound %d = %d kills x max_inflight %d x batch_size %d)',
	$changes, 2 * $changes, $killed, $received, $distinct, $dups, $bound, $killed, $max_inflight,
	$batch_size);

#------------------------------------------------------------------------------
# 2. immediate shutdown during ingest and delivery
#------------------------------------------------------------------------------
standin_post($ct, '/_reset');
standin_post($ct, '/_control', { delay_ms => 100 });
sql(q{
CREATE SEQUENCE public.pg;
-- add: 50 new members; remove: the members of an earlier add page (maybe not there yet);
-- full: a two-page full sync of a cohort of its own, one page per transaction
CREATE FUNCTION public.add_page(k bigint) RETURNS jsonb LANGUAGE sql AS $$
  SELECT page('add_members', 'a' || k, ARRAY(SELECT 'u' || k || '-' || i FROM generate_series(1, 50) i),
              '71', 'Crash ingest') $$;
CREATE FUNCTION public.remove_page(k bigint) RETURNS jsonb LANGUAGE sql AS $$
  SELECT page('remove_members', 'r' || k,
              ARRAY(SELECT 'u' || (k - 3) || '-' || i FROM generate_series(1, 50, 2) i),
              '71', 'Crash ingest') $$;
CREATE FUNCTION public.full_page(k bigint, p integer) RETURNS jsonb LANGUAGE sql AS $$
  SELECT cohortsync.ingest(jsonb_build_object('action', 'members', 'parameters', jsonb_build_object(
    'mixpanel_project_id', 1001, 'mixpanel_cohort_id', 'full' || k, 'mixpanel_cohort_name', 'Full',
    'mixpanel_session_id', 'f' || k,
    'page_info', jsonb_build_object('total_pages', 2, 'page_count', p),
    'members', (SELECT jsonb_agg(jsonb_build_object('mixpanel_distinct_id', 'fu' || k || '-' || i,
                                                    '$CleverTap_user_id', 'ct-fu' || k || '-' || i))
                  FROM generate_series(p * 25 - 24, p * 25) i)))) $$;
});
my $dir = PostgreSQL::Test::Utils::tempdir();
PostgreSQL::Test::Utils::append_to_file("$dir/add.sql", "SELECT add_page(nextval('pg'));\n");
PostgreSQL::Test::Utils::append_to_file("$dir/remove.sql", "SELECT remove_page(nextval('pg'));\n");
PostgreSQL::Test::Utils::append_to_file("$dir/full.sql",
	"SELECT nextval('pg') AS k \\gset\nSELECT full_page(:k, 1);\n\\sleep 300 ms\nSELECT full_page(:k, 2);\n");
my ($out, $err) = ('', '');
my $bench = IPC::Run::start(
	[ 'pgbench', '-n', '-h', $node->host, '-p', $node->port, '-c', '4', '-j', '2', '-T', '60',
	  '-f', "$dir/add.sql\@5", '-f', "$dir/remove.sql\@2", '-f', "$dir/full.sql\@2", 'postgres' ],
	'>', \$out, '2>', \$err);
ok(wait_until(30, sub { sql("SELECT count(*) FROM cohortsync.sync_pages WHERE cohort_id = '71'") >= 40 }),
	'ingest crash: clients are ingesting');
ok(wait_until(30, sub { standin_get($ct, '/_stats')->{in_flight} >= 1 }),
	'ingest crash: and the worker is delivering');
$node->stop('immediate');
$bench->finish;    # its clients lost their connections
$node->start;
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM cohortsync.apply_queue'),
	'ingest crash: the apply worker applies the full syncs queued before the crash');

is(sql(q{SELECT count(*) FROM cohortsync.sync_pages p
          WHERE p.action = 'add_members' AND p.cohort_id = '71'
            AND p.member_count <> (SELECT count(*) FROM cohortsync.membership_changes c
                                    WHERE c.cohort_id = '71' AND c.session_id = p.session_id
                                      AND c.change = 'added')}),
	'0', 'ingest crash: every add page that is recorded has all its changes');
is(sql(q{SELECT count(*) FROM cohortsync.membership_changes c
          WHERE NOT EXISTS (SELECT FROM cohortsync.sync_pages p
                             WHERE p.cohort_id = c.cohort_id AND p.session_id = c.session_id)
            AND c.cohort_id <> '70'}),
	'0', 'ingest crash: no change without its page');
is(sql(q{SELECT count(*) FROM cohortsync.sync_sessions s
          WHERE s.cohort_id LIKE 'full%' AND s.state = 'receiving'
            AND (SELECT count(*) FROM cohortsync.staged_members m
                  WHERE m.cohort_id = s.cohort_id AND m.session_id = s.session_id)
                <> (SELECT sum(p.member_count) FROM cohortsync.sync_pages p
                     WHERE p.cohort_id = s.cohort_id AND p.session_id = s.session_id)}),
	'0', 'ingest crash: every page of an unfinished full sync has its staged members');
is(sql(q{SELECT count(*) FROM cohortsync.sync_sessions s
          WHERE s.cohort_id LIKE 'full%' AND s.state = 'completed'
            AND ((SELECT count(*) FROM cohortsync.members m WHERE m.cohort_id = s.cohort_id) <> 50
                 OR EXISTS (SELECT FROM cohortsync.staged_members m WHERE m.cohort_id = s.cohort_id))}),
	'0', 'ingest crash: every completed full sync has its 50 members and nothing staged');
is(sql(q{SELECT count(*) FROM cohortsync.cohorts c
          WHERE c.member_count <> (SELECT count(*) FROM cohortsync.members m
                                    WHERE m.project_id = c.project_id AND m.cohort_id = c.cohort_id)}),
	'0', 'ingest crash: member_count equals count(*) for every cohort');
is(sql(q{SELECT count(*) FROM (
           SELECT change, row_number() OVER (PARTITION BY cohort_id, distinct_id ORDER BY id) AS n
             FROM cohortsync.membership_changes WHERE cohort_id <> '70') c
          WHERE (n % 2 = 1) <> (change = 'added')}),
	'0', 'ingest crash: per member, the history alternates added/removed, starting with added');
is(sql(q{WITH last AS (
             SELECT DISTINCT ON (cohort_id, distinct_id) cohort_id, distinct_id, change = 'added' AS member
               FROM cohortsync.membership_changes WHERE cohort_id <> '70'
              ORDER BY cohort_id, distinct_id, id DESC),
           cur AS (SELECT cohort_id, distinct_id, true AS member FROM cohortsync.members WHERE cohort_id <> '70')
         SELECT count(*) FROM last FULL JOIN cur USING (cohort_id, distinct_id)
          WHERE coalesce(last.member, false) <> coalesce(cur.member, false)}),
	'0', 'ingest crash: the members are exactly those whose last change is added');
my $counts = sql(q{SELECT count(*) FILTER (WHERE change = 'added') || ' added, '
                          || count(*) FILTER (WHERE change = 'removed') || ' removed, '
                          || count(DISTINCT session_id) || ' sessions with changes, '
                          || (SELECT count(*) FROM cohortsync.sync_sessions
                               WHERE action = 'members' AND state = 'receiving') || ' full syncs cut in half'
                     FROM cohortsync.membership_changes WHERE cohort_id <> '70'});
note "ingest crash: before the crash: $counts";
like($counts, qr/^[1-9]\d* added, [1-9]\d* removed/, 'ingest crash: the workload added and removed members');

# delivery resumes by itself, and every change recorded before the crash arrives
ok(outbox_empty($node, 90), 'ingest crash: delivery resumes by itself after the restart');
$tally = standin_tally($ct);
my @expected = split /\n/, sql(q{
  SELECT 'ct-' || distinct_id || ' ' || t || ' '
         || CASE WHEN t = 'event' THEN initcap(change)
                 WHEN change = 'added' THEN '$add' ELSE '$remove' END
    FROM cohortsync.membership_changes, unnest(ARRAY['event', 'profile']) t
   WHERE cohort_id <> '70'});
my @lost = grep { !$tally->{$_} } @expected;
is(scalar(@lost), 0, 'ingest crash: no outbox row was lost: every change arrived')
  or diag "lost: @lost[0 .. ($#lost < 9 ? $#lost : 9)]";
my $n_received = 0;
$n_received += $_ for values %$tally;
my $ingest_dups = $n_received - scalar(keys %$tally);
cmp_ok($ingest_dups, '<=', $max_inflight * $batch_size, "ingest crash: duplicates ($ingest_dups) bounded");
is(scalar(keys %$tally), scalar(@expected), 'ingest crash: nothing else arrived');
diag sprintf('immediate shutdown during ingest: %d records expected, %d received, %d duplicates',
	scalar(@expected), $n_received, $ingest_dups);

$node->stop;
done_testing();
