# Ingest under concurrency, and without shared_preload_libraries.
#
# Several clients hammer one cohort at once with add_members, remove_members and
# single-page full syncs (ids overlapping on purpose). Whatever the interleaving, the
# history must stay consistent with the membership: per member, changes alternate
# added/removed starting with added, the current members are exactly those whose last
# change is 'added', and the cohort's member_count is their number.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('ingest');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'cohortsync'");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION cohortsync');

my $page = sub {
	my ($action, $session, $ids) = @_;
	return "SELECT cohortsync.ingest(jsonb_build_object('action', $action, 'parameters', "
	  . "jsonb_build_object('mixpanel_project_id', 'p', 'mixpanel_cohort_id', 'hot', "
	  . "'mixpanel_cohort_name', 'Hot', 'mixpanel_session_id', $session, 'members', "
	  . "(SELECT coalesce(jsonb_agg(jsonb_build_object('mixpanel_distinct_id', 'u' || i)), '[]') FROM $ids))));";
};

$node->pgbench(
	'--no-vacuum --client=6 --jobs=2 --transactions=150',
	0,
	[qr{processed: 900/900}],
	[qr{^$}],
	'concurrent adds, removes and full syncs of one cohort',
	{
		'001_add' => "\\set a random(1, 40)\n"
		  . $page->("'add_members'", "'add-' || :client_id", "generate_series(:a, :a + 4) i"),
		'001_remove' => "\\set a random(1, 40)\n"
		  . $page->("'remove_members'", "'rm-' || :client_id", "generate_series(:a, :a + 4) i"),
		'001_full' => "\\set a random(1, 40)\n\\set s random(1, 1000000000)\n"
		  . $page->("'members'", "'full-' || :client_id || '-' || :s",
			"generate_series(1, 45) i WHERE i % 3 <> :a % 3"),
	});
# full syncs are swapped in the background; apply what is still queued now
$node->safe_psql('postgres', 'SELECT cohortsync.apply_pending()');

is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM (
	  SELECT distinct_id, change, row_number() OVER (PARTITION BY distinct_id ORDER BY id) AS n
	    FROM cohortsync.membership_changes WHERE cohort_id = 'hot') c
	 WHERE (n % 2 = 1) <> (change = 'added')}),
	'0',
	'per member, changes alternate added/removed, starting with added');

is( $node->safe_psql(
		'postgres', q{
	WITH last AS (
	  SELECT DISTINCT ON (distinct_id) distinct_id, change
	    FROM cohortsync.membership_changes WHERE cohort_id = 'hot'
	   ORDER BY distinct_id, id DESC),
	expected AS (SELECT distinct_id FROM last WHERE change = 'added'),
	actual AS (SELECT distinct_id FROM cohortsync.members WHERE cohort_id = 'hot')
	SELECT count(*) FROM (
	  (SELECT * FROM actual EXCEPT ALL SELECT * FROM expected)
	  UNION ALL
	  (SELECT * FROM expected EXCEPT ALL SELECT * FROM actual)) d}),
	'0',
	'the members are exactly those whose last change is added');

is( $node->safe_psql(
		'postgres', q{
	SELECT member_count = (SELECT count(*) FROM cohortsync.members WHERE cohort_id = 'hot')
	  FROM cohortsync.cohorts WHERE cohort_id = 'hot'}),
	't',
	'member_count matches');

ok( $node->safe_psql('postgres',
		q{SELECT count(*) FROM cohortsync.membership_changes WHERE cohort_id = 'hot'}) > 100,
	'the workload did change membership many times');

is($node->safe_psql('postgres', 'SELECT count(*) FROM cohortsync.staged_members'),
	'0', 'single-page full syncs leave nothing staged');

# An immediate shutdown in the middle of a multi-page full sync loses no staged page,
# and the sync completes after the restart.
$node->safe_psql('postgres',
	$page->("'members'", "'crash-1'", "generate_series(1, 10) i")
	  =~ s/'members', \(SELECT/'page_info', '{"total_pages": 2, "page_count": 1}'::jsonb, 'members', (SELECT/r);
$node->stop('immediate');
$node->start;
$node->safe_psql('postgres',
	$page->("'members'", "'crash-1'", "generate_series(11, 12) i")
	  =~ s/'members', \(SELECT/'page_info', '{"total_pages": 2, "page_count": 2}'::jsonb, 'members', (SELECT/r);
$node->safe_psql('postgres', 'SELECT cohortsync.apply_pending()');
is( $node->safe_psql('postgres',
		q{SELECT string_agg(distinct_id, ',' ORDER BY distinct_id COLLATE "C") FROM cohortsync.members WHERE cohort_id = 'hot'}),
	'u1,u10,u11,u12,u2,u3,u4,u5,u6,u7,u8,u9',
	'a full sync interrupted by a crash between pages completes after restart');
$node->stop;

# The SQL functions work without shared_preload_libraries.
my $plain = PostgreSQL::Test::Cluster->new('plain');
$plain->init;
$plain->start;
$plain->safe_psql('postgres', 'CREATE EXTENSION cohortsync');
like(
	$plain->safe_psql('postgres',
		q{SELECT cohortsync.ingest('{"action": "add_members", "parameters": {"mixpanel_project_id": "p", "mixpanel_cohort_id": "c", "mixpanel_session_id": "s", "members": [{"mixpanel_distinct_id": "a"}]}}')}
	),
	qr/"status": "success"/,
	'ingest works without shared_preload_libraries');
$plain->stop;

done_testing();
