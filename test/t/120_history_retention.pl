# cohortsync.history_retention (issue #12): the delivery worker prunes the history on
# its own, as prune_history() does, while it keeps delivering; membership, the queue
# and members_at() from the horizon on are unaffected. And the status of a server
# that does not preload the library.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CsDelivery;

my $ct = start_standin();
my $node = new_delivery_node('retention', $ct);

sub sql { return $node->safe_psql('postgres', $_[0]); }

# a history of three cohorts, then made two months old, and a change of today
sql(q{SELECT page('add_members', 'r1', ARRAY['A', 'B', 'C'], '1');
      SELECT page('remove_members', 'r2', ARRAY['B'], '1');
      SELECT page('add_members', 'r3', ARRAY['B'], '1');
      SELECT page('add_members', 'r1', ARRAY['X'], '2');
      SELECT page('remove_members', 'r2', ARRAY['X'], '2');
      SELECT page('add_members', 'r1', ARRAY['Y'], '3');});
ok(outbox_empty($node, 30), 'the changes are delivered');
sql(q{UPDATE cohortsync.membership_changes SET changed_at = now() - interval '60 days';
      UPDATE cohortsync.sync_sessions SET last_page_at = now() - interval '60 days',
                                          completed_at = now() - interval '60 days';});
sql(q{SELECT page('remove_members', 'r4', ARRAY['C'], '1')});
ok(outbox_empty($node, 30), 'a change of today is delivered');
my $members = sql('SELECT cohort_id, distinct_id FROM cohortsync.members ORDER BY 1, 2');
my $at = sql(q{SELECT string_agg(distinct_id, ',' ORDER BY distinct_id)
                 FROM cohortsync.members_at('1001', '1', now() - interval '10 days')});
is($at, 'A,B,C', 'members_at ten days ago, before pruning');
is(sql('SELECT count(*) FROM cohortsync.membership_changes'), '9', 'nine changes before pruning');

sql(q{ALTER SYSTEM SET cohortsync.history_retention = '30d'; SELECT pg_reload_conf();});
ok(wait_until(40, sub { sql('SELECT count(*) FROM cohortsync.history_pruned') eq '1' }),
	'with a retention set, the worker prunes on its own');
ok(wait_until(10, sub { sql('SELECT count(*) FROM cohortsync.membership_changes') eq '5' }),
	'it deletes the superseded changes before the horizon (B joined again; X left)')
  or diag sql('SELECT * FROM cohortsync.membership_changes ORDER BY id');
is(sql(q{SELECT string_agg(distinct_id || ':' || change, ',' ORDER BY id) FROM cohortsync.membership_changes}),
	'A:added,C:added,B:added,Y:added,C:removed', 'each member keeps their last join before the horizon');
is(sql('SELECT cohort_id, distinct_id FROM cohortsync.members ORDER BY 1, 2'), $members, 'membership is untouched');
is(sql(q{SELECT string_agg(distinct_id, ',' ORDER BY distinct_id)
           FROM cohortsync.members_at('1001', '1', now() - interval '10 days')}), $at,
	'members_at ten days ago: the same answer after pruning');
is(sql(q{SELECT count(*) FROM cohortsync.sync_sessions}), '3',
	'finished sessions before the horizon are gone, each cohort\'s last one kept');
like(sql(q{SELECT detail FROM cohortsync.status() WHERE check_name = 'history retention'}),
	qr/^pruned by the delivery worker after 30d; complete from /, 'status() says so');

sql(q{SELECT page('add_members', 'r5', ARRAY['Z'], '1')});
ok(outbox_empty($node, 30), 'delivery goes on');
$node->stop;

# A server that does not preload the library has no delivery worker: the status says so.
my $plain = PostgreSQL::Test::Cluster->new('plain');
$plain->init;
$plain->start;
$plain->safe_psql('postgres', 'CREATE EXTENSION cohortsync');
$plain->safe_psql('postgres', "BEGIN; SET LOCAL log_statement = 'none';
    SELECT cohortsync.connect_clevertap('ct', 'ACC', '$PASSCODE', 'eu1', '$ct->{url}'); COMMIT;");
is($plain->safe_psql('postgres', 'SELECT reason FROM cohortsync.destination_status'),
	'cohortsync is not in shared_preload_libraries: no delivery worker runs',
	'status: without preloading, the reason says no delivery worker runs');
$plain->stop;
done_testing();
