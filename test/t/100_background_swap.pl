# Full syncs applied by the "cohortsync apply" background worker (issue #11):
#  - the worker applies a queued swap by itself;
#  - kill -9 of the worker in the middle of a swap, and an immediate shutdown
#    with swaps queued: after the restart each is applied exactly once (no
#    missing or duplicate history, two outbox records per change), and the
#    diff pages that arrived meanwhile were answered at once and land after it;
#  - several senders posting diffs and full syncs of a few cohorts at once, with
#    swaps left pending at random: membership, history and sessions are those of
#    a sequential replay of the same pages, in the order they committed, into a
#    second database.
#
# A swap is made slow by a statement trigger on membership_changes that sleeps
# when the apply worker fires it (pg_stat_activity.backend_type).
use strict;
use warnings;

use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use CsDelivery;

# the TAP framework turns restart_after_crash off; a crash must restart here
my $node = new_delivery_node('bgswap', undef, conf => ['restart_after_crash = on']);

sub sql { return $node->safe_psql($_[1] // 'postgres', $_[0]); }

sub apply_pid { return worker_pid($node, 'cohortsync apply'); }

# a destination nobody answers: its records just queue, one event and one
# profile per change
sql("SELECT cohortsync.connect_clevertap('dead', 'ACC', '$PASSCODE', 'eu1', 'http://127.0.0.1:9')");

sql(q{
CREATE FUNCTION public.ids(prefix text, lo int, hi int) RETURNS text[] LANGUAGE sql AS $$
  SELECT coalesce(array_agg(prefix || i ORDER BY i), '{}') FROM generate_series(lo, hi) i
$$;
CREATE FUNCTION public.send(action text, cohort text, session text, ids text[],
                            pg int DEFAULT 1, total int DEFAULT 1) RETURNS text LANGUAGE sql AS $$
  SELECT cohortsync.ingest(jsonb_build_object('action', action, 'parameters', jsonb_build_object(
    'mixpanel_project_id', 1001, 'mixpanel_cohort_id', cohort, 'mixpanel_session_id', session,
    'page_info', jsonb_build_object('total_pages', total, 'page_count', pg),
    'members', coalesce((SELECT jsonb_agg(jsonb_build_object('mixpanel_distinct_id', id,
                                                             '$CleverTap_user_id', 'ct-' || id) ORDER BY id)
                           FROM unnest(ids) id), '[]')))) ->> 'status'
$$;
-- the worker's first swap statement after a RESTART of slow_once sleeps: nextval
-- is not undone by a crash, so the swap runs at full speed after the restart
CREATE SEQUENCE public.slow_once;
SELECT nextval('public.slow_once');
CREATE FUNCTION public.slow_applier() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF (SELECT backend_type FROM pg_stat_activity WHERE pid = pg_backend_pid()) = 'cohortsync apply' THEN
    IF nextval('public.slow_once') = 1 THEN
      PERFORM pg_sleep(300);
    END IF;
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER slow_applier AFTER INSERT ON cohortsync.membership_changes
  FOR EACH STATEMENT EXECUTE FUNCTION public.slow_applier();
});

# Exactly once, for a cohort: no change recorded twice for a session and member,
# per member the history alternates added/removed starting with added, the
# members are those whose last change is added, member_count is right, and every
# change has its two outbox records and no more.
sub exactly_once_checks
{
	my ($label, $cohort) = @_;
	is( sql(qq{
		SELECT count(*) FROM (SELECT session_id, distinct_id, change FROM cohortsync.membership_changes
		                       WHERE cohort_id = '$cohort' GROUP BY 1, 2, 3 HAVING count(*) > 1) d}),
		'0', "$label: no change recorded twice");
	is( sql(qq{
		SELECT count(*) FROM (
		  SELECT change, row_number() OVER (PARTITION BY distinct_id ORDER BY id) AS n
		    FROM cohortsync.membership_changes WHERE cohort_id = '$cohort') c
		 WHERE (n % 2 = 1) <> (change = 'added')}),
		'0', "$label: per member, the history alternates added/removed");
	is( sql(qq{
		WITH last AS (SELECT DISTINCT ON (distinct_id) distinct_id, change = 'added' AS member
		                FROM cohortsync.membership_changes WHERE cohort_id = '$cohort'
		               ORDER BY distinct_id, id DESC),
		     cur AS (SELECT distinct_id, true AS member FROM cohortsync.members WHERE cohort_id = '$cohort')
		SELECT count(*) FROM last FULL JOIN cur USING (distinct_id)
		 WHERE coalesce(last.member, false) <> coalesce(cur.member, false)}),
		'0', "$label: the members are those whose last change is added");
	is( sql(qq{
		SELECT member_count = (SELECT count(*) FROM cohortsync.members WHERE cohort_id = '$cohort')
		  FROM cohortsync.cohorts WHERE cohort_id = '$cohort'}),
		't', "$label: member_count is right");
	is( sql(qq{
		SELECT count(*) FROM cohortsync.membership_changes c
		 WHERE c.cohort_id = '$cohort'
		   AND (SELECT count(*) FROM cohortsync.outbox o WHERE o.change_id = c.id) <> 2}),
		'0', "$label: every change has exactly its two outbox records");
}

# Wait until the worker sleeps in the slow trigger, i.e. is in the middle of a swap.
sub worker_mid_swap
{
	return $node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'cohortsync apply' AND wait_event = 'PgSleep'");
}

#------------------------------------------------------------------------------
# The worker applies a queued full sync by itself
#------------------------------------------------------------------------------
ok(wait_until(30, sub { apply_pid() ne '' }), 'the apply worker runs');
is(sql("SELECT application_name FROM pg_stat_activity WHERE backend_type = 'cohortsync apply'"),
	'cohortsync apply', 'with its application_name');

is(sql("SELECT send('members', 'a', 'a1', ids('m', 1, 600), 1, 2)"), 'success', 'auto: page 1 of 2');
is(sql("SELECT send('members', 'a', 'a1', ids('m', 601, 1000), 2, 2)"), 'success', 'auto: page 2 of 2');
ok($node->poll_query_until('postgres', "SELECT state FROM cohortsync.sync_sessions WHERE session_id = 'a1'",
		'completed'), 'auto: the worker completes the session by itself');
is(sql("SELECT count(*) FROM cohortsync.members WHERE cohort_id = 'a'"), '1000', 'auto: all members are in');
is(sql(q{SELECT members_added || ' ' || (applying_since <= completed_at) || ' ' || (apply_duration IS NOT NULL)
           FROM cohortsync.sync_sessions WHERE session_id = 'a1'}),
	'1000 true true', 'auto: the session says when the swap was queued, when it completed and how long it took');
# woken by the commit of the last page, not by its 10 s poll
cmp_ok(sql("SELECT extract(epoch FROM completed_at - applying_since) FROM cohortsync.sync_sessions WHERE session_id = 'a1'"),
	'<', 3, 'auto: the worker was woken by the commit of the last page');
is(sql("SELECT count(*) FROM cohortsync.apply_queue"), '0', 'auto: the queue is empty');
exactly_once_checks('auto', 'a');

#------------------------------------------------------------------------------
# kill -9 of the worker in the middle of a swap
#------------------------------------------------------------------------------
sql("ALTER SEQUENCE public.slow_once RESTART");
# churn: m1..m250 leave, m1001..m1250 join
is(sql("SELECT send('members', 'a', 'b1', ids('m', 251, 1250))"), 'success', 'kill: a full sync is queued');
ok(worker_mid_swap(), 'kill: the worker is in the middle of the swap');

my $t0 = time();
is(sql("SELECT send('add_members', 'a', 'd1', ARRAY['late1'])"), 'success', 'kill: a diff meanwhile is answered');
is(sql("SELECT send('remove_members', 'a', 'd2', ARRAY['m300'])"), 'success', 'kill: and another');
cmp_ok(time() - $t0, '<', 10, 'kill: at once, while the swap runs');
is(sql("SELECT string_agg(action, ',' ORDER BY id) FROM cohortsync.apply_queue WHERE cohort_id = 'a'"),
	'members,add_members,remove_members', 'kill: the diffs are queued behind the swap');

my $pid = apply_pid();
kill 'KILL', $pid;
ok(wait_until(60, sub { my $p = apply_pid(); $p ne '' && $p ne $pid }),
	'kill: the postmaster restarts, and a new worker runs');
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM cohortsync.apply_queue'),
	'kill: the new worker applies the queue');
is(sql("SELECT state || ' ' || members_added || ' ' || members_removed FROM cohortsync.sync_sessions WHERE session_id = 'b1'"),
	'completed 250 250', 'kill: the swap was applied once');
is(sql(q{SELECT string_agg(distinct_id || ' ' || change || ' ' || session_id, ',' ORDER BY id)
           FROM cohortsync.membership_changes WHERE session_id IN ('d1', 'd2')}),
	'late1 added d1,m300 removed d2', 'kill: the diffs landed after it');
is(sql("SELECT count(*) FROM cohortsync.membership_changes WHERE cohort_id = 'a'"), '1502',
	'kill: 1000 + 500 + 2 changes, no more, no fewer');
is(sql("SELECT count(*) FROM cohortsync.members WHERE cohort_id = 'a'"), '1000', 'kill: 1000 members');
exactly_once_checks('kill', 'a');

#------------------------------------------------------------------------------
# Immediate shutdown with swaps queued
#------------------------------------------------------------------------------
sql("ALTER SEQUENCE public.slow_once RESTART");
is(sql("SELECT send('members', 'c', 'c1', ids('c', 1, 300))"), 'success', 'immediate: a full sync of c is queued');
ok(worker_mid_swap(), 'immediate: the worker is in the middle of its swap');
is(sql("SELECT send('members', 'd', 'dd1', ids('d', 1, 200))"), 'success', 'immediate: one of d is queued');
is(sql("SELECT send('add_members', 'c', 'cd1', ARRAY['c1', 'c999'])"), 'success',
	'immediate: a diff of c is queued behind its swap');
is(sql("SELECT send('members', 'c', 'c2', ids('c', 101, 400))"), 'success',
	'immediate: a second full sync of c is queued behind it');
is(sql("SELECT string_agg(state, ',' ORDER BY session_id) FROM cohortsync.sync_sessions WHERE session_id IN ('c1', 'c2')"),
	'applying,applying', 'immediate: the first is not superseded by the second');
$node->stop('immediate');
$node->start;
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM cohortsync.apply_queue'),
	'immediate: after the restart the worker applies the queue');
is(sql(q{SELECT string_agg(session_id || ' ' || state || ' ' || members_added || ' ' || members_removed, ','
                           ORDER BY session_id)
           FROM cohortsync.sync_sessions WHERE session_id IN ('c1', 'c2', 'dd1')}),
	'c1 completed 300 0,c2 completed 100 101,dd1 completed 200 0',
	'immediate: each swap applied once, in order (c999 joins by the diff, leaves by c2)');
is(sql("SELECT count(*) FROM cohortsync.members WHERE cohort_id = 'c'"), '300', 'immediate: c has its 300 members');
is(sql("SELECT count(*) FROM cohortsync.members WHERE cohort_id = 'd'"), '200', 'immediate: d has its 200 members');
exactly_once_checks("immediate, $_", $_) for qw(c d);

#------------------------------------------------------------------------------
# Concurrent senders against a sequential replay
#------------------------------------------------------------------------------
sql(q{
-- every swap of the worker sleeps up to 0.2 s a statement: swaps stay pending
-- while the senders go on
CREATE FUNCTION public.dawdle() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF (SELECT backend_type FROM pg_stat_activity WHERE pid = pg_backend_pid()) = 'cohortsync apply' THEN
    PERFORM pg_sleep(random() * 0.2);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER dawdle AFTER INSERT ON cohortsync.membership_changes
  FOR EACH STATEMENT EXECUTE FUNCTION public.dawdle();
-- the pages in the order they committed, per cohort: the id is taken after
-- ingest, under the cohort's row lock; queued: how much was queued for the cohort
CREATE TABLE public.arrivals (id bigserial PRIMARY KEY, page jsonb NOT NULL, queued bigint NOT NULL);
});

my $json = JSON::PP->new->canonical(1);
srand(11);
my @cohorts = qw(e1 e2 e3);
my $senders = 4;
my @handles;
for my $s (1 .. $senders)
{
	my $script = '';
	my $n = 0;
	while ($n < 30)
	{
		my $cohort = $cohorts[ int(rand(@cohorts)) ];
		my $r = rand();
		my @pages;
		if ($r < 0.3)
		{
			# a full sync of two pages: a random snapshot of u1..u30
			my @ids = grep { rand() < 0.5 } 1 .. 30;
			my $half = int(@ids / 2);
			my $session = "f$s-$n";
			push @pages, [ 'members', $session, [ @ids[ 0 .. $half - 1 ] ], 1, 2 ],
			  [ 'members', $session, [ @ids[ $half .. $#ids ] ], 2, 2 ];
		}
		else
		{
			my $action = $r < 0.65 ? 'add_members' : 'remove_members';
			push @pages, [ $action, "$action-$s-$n", [ grep { rand() < 0.15 } 1 .. 30 ], 1, 1 ];
		}
		for my $p (@pages)
		{
			my ($action, $session, $ids, $pg, $total) = @$p;
			my $page = $json->encode({
				action => $action,
				parameters => {
					mixpanel_project_id => '1001', mixpanel_cohort_id => $cohort,
					mixpanel_session_id => $session,
					page_info => { page_count => $pg, total_pages => $total },
					members => [ map { { mixpanel_distinct_id => "u$_", email => "u$_-$session\@example.com",
								'$CleverTap_user_id' => "ct-u$_" } } @$ids ] } });
			$script .= "BEGIN;\n"
			  . "SELECT cohortsync.ingest(\$p\$$page\$p\$::jsonb) ->> 'status';\n"
			  . "INSERT INTO public.arrivals (page, queued) SELECT \$p\$$page\$p\$::jsonb,"
			  . " (SELECT count(*) FROM cohortsync.apply_queue WHERE cohort_id = '$cohort');\n"
			  . "COMMIT;\n"
			  . (rand() < 0.3 ? "SELECT pg_sleep(0.05);\n" : '');
		}
		$n++;
	}
	my $file = "${PostgreSQL::Test::Utils::tmp_check}/sender$s.sql";
	PostgreSQL::Test::Utils::append_to_file($file, $script);
	my ($out, $err) = ('', '');
	push @handles, [
		IPC::Run::start(
			[ 'psql', '-X', '-At', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-f', $file ],
			'>', \$out, '2>', \$err),
		\$out, \$err ];
}
my $senders_ok = 1;
for my $h (@handles)
{
	$h->[0]->finish;
	$senders_ok = 0 if $h->[0]->result != 0 || ${ $h->[1] } =~ /failure/;
	diag ${ $h->[2] } if ${ $h->[2] } ne '';
}
ok($senders_ok, 'concurrent: every sender got a success for every page');
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM cohortsync.apply_queue'),
	'concurrent: the worker applies everything');

my $stats = sql(q{
	SELECT count(*) || ' pages, '
	       || count(*) FILTER (WHERE page ->> 'action' <> 'members' AND queued > 0) || ' diffs queued behind a swap, '
	       || count(*) FILTER (WHERE page ->> 'action' = 'members' AND queued > 1) || ' full-sync pages sent while something was queued'
	  FROM public.arrivals});
note "concurrent: $stats";
like($stats, qr/^\d+ pages, [1-9]\d* diffs queued/, 'concurrent: diffs did arrive while swaps were pending');

# the same pages, one after the other, each applied at once, into another database
sql('CREATE DATABASE replay');
sql('CREATE EXTENSION cohortsync', 'replay');
my $replay = "BEGIN;\n";
for my $page (split /\n/, sql('SELECT page FROM public.arrivals ORDER BY id'))
{
	$replay .= "SELECT cohortsync.ingest(\$p\$$page\$p\$::jsonb);\nSELECT cohortsync.apply_pending();\n";
}
sql($replay . "COMMIT;\n", 'replay');

# Per cohort: membership with the fields stored, sessions with their counts, and
# the history in order. Changes made by one statement (one swap's joins, one
# page's adds) have no order among themselves: each run of changes of the same
# kind and session is compared as a sorted set.
sub state_of
{
	my ($db) = @_;
	my $members = sql(q{
		SELECT cohort_id || ': ' || string_agg(distinct_id || '/' || email, ' ' ORDER BY distinct_id)
		  FROM cohortsync.members WHERE cohort_id LIKE 'e_' GROUP BY cohort_id ORDER BY cohort_id}, $db);
	my $sessions = sql(q{
		SELECT string_agg(concat_ws('/', cohort_id, session_id, action, state, pages_received,
		                            members_added, members_removed), ' ' ORDER BY cohort_id, session_id, action)
		  FROM cohortsync.sync_sessions WHERE cohort_id LIKE 'e_'}, $db);
	my @history;
	for my $line (split /\n/, sql(q{
		SELECT cohort_id, change, session_id, distinct_id FROM cohortsync.membership_changes
		 WHERE cohort_id LIKE 'e_' ORDER BY cohort_id, id}, $db))
	{
		my ($cohort, $change, $session, $id) = split /\|/, $line;
		my $run = "$cohort $change $session";
		push @history, [ $run, [] ] if !@history || $history[-1][0] ne $run;
		push @{ $history[-1][1] }, $id;
	}
	my $history = join "\n", map { "$_->[0]: " . join(' ', sort @{ $_->[1] }) } @history;
	return ($members, $sessions, $history);
}
my ($bg_members, $bg_sessions, $bg_history) = state_of('postgres');
my ($seq_members, $seq_sessions, $seq_history) = state_of('replay');
isnt($bg_history, '', 'concurrent: the senders changed membership');
is($bg_members, $seq_members, 'concurrent: membership is that of the sequential replay');
is($bg_sessions, $seq_sessions, 'concurrent: sessions and their counts too');
is($bg_history, $seq_history, 'concurrent: and the history, change by change');
exactly_once_checks("concurrent, $_", $_) for @cohorts;

$node->stop;
done_testing();
