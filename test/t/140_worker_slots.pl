# A server whose max_worker_processes cannot hold every cohortsync worker: the
# postmaster registers the excess with a LOG line only and never starts it. The
# workers cohortsync cannot do without (delivery, apply) are registered first, so
# it is the listener's pool that is cut, and a WARNING says so at startup.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CsDelivery;

# 1 delivery + 1 apply + 1 acceptor + 4 listener workers = 7 wanted, 5 slots
my $node = new_delivery_node('slots', undef,
	conf => ["max_worker_processes = 5"]);

sub sql { return $node->safe_psql('postgres', $_[0]); }

my $log = slurp_file($node->logfile);
like($log, qr/WARNING:  cohortsync needs 7 background workers, but max_worker_processes is 5/,
	'the startup log warns that the workers do not fit');
like($log, qr/HINT:  Raise max_worker_processes to at least 7/, 'and says what to raise');

ok(wait_until(30, sub {
		sql(q{SELECT count(*) FROM pg_stat_activity
		      WHERE backend_type IN ('cohortsync delivery', 'cohortsync apply')}) eq '2' }),
	'the delivery and apply workers run');

# and the apply worker does its job: a full sync completed in SQL is swapped in
sql(q{SELECT cohortsync.ingest(jsonb_build_object('action', 'members', 'parameters',
        jsonb_build_object('mixpanel_project_id', 1, 'mixpanel_cohort_id', 'c',
          'mixpanel_cohort_name', 'C', 'mixpanel_session_id', 's1',
          'page_info', jsonb_build_object('total_pages', 1, 'page_count', 1),
          'members', '[{"mixpanel_distinct_id": "a"}, {"mixpanel_distinct_id": "b"}]'::jsonb)))});
ok(wait_until(30, sub { sql(q{SELECT state FROM cohortsync.sync_sessions WHERE session_id = 's1'})
	  eq 'completed' }), 'the apply worker swaps a full sync in');
is(sql(q{SELECT count(*) FROM cohortsync.members WHERE cohort_id = 'c'}), '2', 'both members are in');

$node->stop;
done_testing();
