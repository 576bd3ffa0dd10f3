# A drained queue stays small (issue #13, "Delivery under stress"): once the outbox is
# empty, the delivery worker truncates it (cohortsync._shrink_outbox) without ever
# waiting for a lock, so ingest is never stalled behind it.
#
# 1. a backlog drains and the outbox's files shrink below the threshold; the ids keep
#    counting and records queued afterwards are delivered
# 2. an ingest transaction that has queued records and not committed, or a reader
#    such as pg_dump, makes the shrink give up at once, and is not held up by it
# 3. ingest committing all around shrinks called in a loop: every record is delivered
#    exactly once
#
# CS_SHRINK_CHANGES=150000 makes part 1 the 300,000-record measurement of BENCHMARKS.md.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use CsDelivery;

my $changes = $ENV{CS_SHRINK_CHANGES} // 20_000;
my $threshold = 8 * 1024 * 1024;

my $ct = start_standin();
my $node = new_delivery_node('shrink', $ct);

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub sizes
{
	return sql(q{SELECT string_agg(format('%s %s', c.relname, pg_size_pretty(pg_relation_size(c.oid))), ', '
	                                ORDER BY c.relname)
	               || ', total ' || pg_size_pretty(pg_total_relation_size('cohortsync.outbox'))
	               FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
	              WHERE i.indrelid = 'cohortsync.outbox'::regclass}) . ', heap '
	  . sql("SELECT pg_size_pretty(pg_relation_size('cohortsync.outbox'))");
}
sub total { return sql("SELECT pg_total_relation_size('cohortsync.outbox')"); }

sql(q{
CREATE FUNCTION public.lean_page(g integer, n integer DEFAULT 1000) RETURNS jsonb LANGUAGE sql AS $$
  SELECT cohortsync.ingest(jsonb_build_object('action', 'add_members', 'parameters', jsonb_build_object(
    'mixpanel_project_id', 1001, 'mixpanel_cohort_id', '80', 'mixpanel_cohort_name', 'Shrink',
    'mixpanel_session_id', 's' || g,
    'members', (SELECT jsonb_agg(jsonb_build_object('mixpanel_distinct_id', 'm' || g || '-' || i,
                                                    '$CleverTap_user_id', 'ct-m' || g || '-' || i,
                                                    'email', 'm' || g || '-' || i || '@example.com'))
                  FROM generate_series(1, n) i)))) $$;
});

#------------------------------------------------------------------------------
# 1. a drained backlog shrinks
#------------------------------------------------------------------------------
sql("SELECT cohortsync.pause_destination('ct')");
my $t0 = time();
sql("SELECT lean_page(0); ANALYZE cohortsync.members, cohortsync.membership_changes, cohortsync.outbox;");
sql(join('', map { "SELECT lean_page($_);\n" } 1 .. $changes / 1000 - 1));
is(sql("SELECT count(*) FROM cohortsync.outbox"), 2 * $changes, "drain: $changes changes queued");
my $queued = sizes();
my $queued_total = total();
note sprintf('queued in %.1f s: %s', time() - $t0, $queued);
cmp_ok($queued_total, '>', $threshold, 'drain: the queued outbox is over the threshold');
my $max_id = sql("SELECT max(id) FROM cohortsync.outbox");

$t0 = time();
sql("SELECT cohortsync.resume_destination('ct')");
ok(outbox_empty($node, 300), 'drain: the outbox drains');
my $drain_s = time() - $t0;
# the worker looks every ten seconds at most: this is usually before it did
my ($drained, $drained_total) = (sizes(), total());
note sprintf('drained in %.1f s: %s', $drain_s, $drained);
ok(wait_until(60, sub { total() < $threshold }), 'drain: the worker truncates the drained outbox');
my $after = sizes();
note "after the shrink: $after";
ok(wait_until(10, sub { slurp_file($node->logfile) =~ /truncated the drained outbox/ }),
	'drain: and says so in the log');
diag sprintf('drained outbox, %d records: queued %s; drained %s; shrunk %s',
	2 * $changes, $queued, $drained, $after);

# ids go on from where they were: the worker's cursor and per-identity order rely on it
sql("SELECT cohortsync.pause_destination('ct')");
sql("SELECT lean_page(-1, 10)");
cmp_ok(sql("SELECT min(id) FROM cohortsync.outbox"), '>', $max_id, 'drain: ids keep counting after the truncation');
sql("SELECT cohortsync.resume_destination('ct')");
ok(outbox_empty($node, 60), 'drain: records queued after the truncation are delivered');
my $tally = standin_tally($ct);
my ($received, $distinct) = (0, scalar(keys %$tally));
$received += $_ for values %$tally;
is($distinct, 2 * ($changes + 10), 'drain: every record arrived');
is($received, $distinct, 'drain: each once');

#------------------------------------------------------------------------------
# 2. a transaction holding the outbox: the shrink gives up at once
#------------------------------------------------------------------------------
sub shrink_now
{
	my $t = time();
	my $r = sql("SELECT cohortsync._shrink_outbox(0)");
	return ($r, time() - $t);
}

# a session that holds the outbox for a while; psql's exit code says whether it
# could finish what it did
sub hold
{
	my ($script) = @_;
	my ($out, $err) = ('', '');
	$script =~ s/; */;\n/g;
	# from a file: each statement shows in pg_stat_activity while it runs
	my $file = PostgreSQL::Test::Utils::tempdir() . '/hold.sql';
	PostgreSQL::Test::Utils::append_to_file($file, $script);
	my $h = IPC::Run::start(
		[ 'psql', '-X', '-v', 'ON_ERROR_STOP=1', '-h', $node->host, '-p', $node->port, '-d', 'postgres',
		  '-f', $file ],
		'>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err };
}
sub holding
{
	my ($pattern) = @_;
	return wait_until(30, sub {
		sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%$pattern%' AND state = 'active'"
			  . " AND pid <> pg_backend_pid()") > 0
	});
}

sql("SELECT cohortsync.pause_destination('ct')");
is((shrink_now())[0], 't', 'locks: an empty outbox is truncated');

# an ingest transaction that queued records and has not committed: they are
# invisible, so the outbox looks empty, but its lock is there
my $ingest = hold("SET lock_timeout = '1s'; BEGIN; SELECT lean_page(-2, 10); SELECT pg_sleep(3) AS ingest_open;"
	  . " SELECT lean_page(-3, 10); COMMIT;");
ok(holding('ingest_open'), 'locks: an ingest transaction is open');
my ($r, $secs) = shrink_now();
is($r, 'f', 'locks: with an ingest transaction open, the shrink gives up');
cmp_ok($secs, '<', 1, 'locks: at once');
$ingest->{h}->finish;
is(($ingest->{h}->results)[0], 0, 'locks: the ingest transaction goes on and commits')
  or diag ${ $ingest->{err} };
is(sql("SELECT count(*) FROM cohortsync.outbox"), 40, 'locks: with all it queued');
is((shrink_now())[0], 'f', 'locks: a queue with records is not truncated');

sql("SELECT cohortsync.resume_destination('ct')");
ok(outbox_empty($node, 60), 'locks: delivered');
# a reader (pg_dump takes ACCESS SHARE on every table it dumps)
my $reader = hold("BEGIN; SELECT count(*) FROM cohortsync.outbox; SELECT pg_sleep(3) AS reader_open; COMMIT;");
ok(holding('reader_open'), 'locks: a reader of the outbox is open');
($r, $secs) = shrink_now();
is($r, 'f', 'locks: with a reader open, the shrink gives up');
cmp_ok($secs, '<', 1, 'locks: at once');
$reader->{h}->finish;
is(($reader->{h}->results)[0], 0, 'locks: the reader finishes');

#------------------------------------------------------------------------------
# 3. ingest commits around shrinks, in a loop: nothing lost, nothing twice
#------------------------------------------------------------------------------
standin_post($ct, '/_reset');
sql("CREATE SEQUENCE public.pg START 1000; CREATE TABLE public.shrinks (at timestamptz DEFAULT clock_timestamp())");
my $dir = PostgreSQL::Test::Utils::tempdir();
# ingest with pauses, so that the outbox is empty now and then
PostgreSQL::Test::Utils::append_to_file("$dir/ingest.sql",
	"SELECT lean_page(nextval('pg')::integer, 20);\n\\sleep 100 ms\n");
PostgreSQL::Test::Utils::append_to_file("$dir/shrink.sql",
	"INSERT INTO shrinks SELECT FROM (SELECT cohortsync._shrink_outbox(0) AS t) s WHERE t;\n\\sleep 5 ms\n");
my $changes_before = sql("SELECT count(*) FROM cohortsync.membership_changes");
my ($out, $err) = ('', '');
my $bench = IPC::Run::start(
	[ 'pgbench', '-n', '-h', $node->host, '-p', $node->port, '-c', '3', '-j', '3', '-T', '20',
	  '-f', "$dir/ingest.sql\@1", '-f', "$dir/shrink.sql\@1", 'postgres' ],
	'>', \$out, '2>', \$err);
$bench->finish;
is(($bench->results)[0], 0, 'loop: ingest and shrinks ran side by side') or diag $err;
ok(outbox_empty($node, 120), 'loop: the outbox drains');
my $new_changes = sql("SELECT count(*) FROM cohortsync.membership_changes") - $changes_before;
my $shrinks = sql("SELECT count(*) FROM shrinks");
cmp_ok($shrinks, '>', 10, "loop: the outbox was truncated between commits ($shrinks times)");
$tally = standin_tally($ct);
($received, $distinct) = (0, scalar(keys %$tally));
$received += $_ for values %$tally;
is($distinct, 2 * $new_changes, "loop: every record of the $new_changes changes arrived");
is($received, $distinct, 'loop: each once');
is(sql("SELECT count(*) FROM cohortsync.failed_records"), '0', 'loop: no record failed');
diag sprintf('ingest around shrinks: %d changes in 20 s, the outbox truncated %d times, %d records delivered, %d distinct',
	$new_changes, $shrinks, $received, $distinct);

done_testing();
