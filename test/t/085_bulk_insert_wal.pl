# Which path wrote a page, read from the WAL: a page of new members and a staged page
# of a full sync are written as COPY writes them (src/bulk_insert.c: one Heap2
# MULTI_INSERT record per heap page), while a table a user changed (here a trigger of
# their own) is left to the SQL statements, which log one Heap INSERT per row. The
# pgTAP suite checks that both paths write the same rows; this checks which one ran.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CsDelivery;

my $node = new_delivery_node('walpath');
sub sql { return $node->safe_psql('postgres', $_[0]); }
sql('CREATE EXTENSION pg_walinspect');

# A page of 200 members: action, cohort, session, page_count, total_pages.
sub page
{
	my ($action, $cohort, $session, $n, $total) = @_;
	return qq{SELECT cohortsync.ingest(jsonb_build_object('action', '$action', 'parameters',
	    jsonb_build_object('mixpanel_project_id', 1, 'mixpanel_cohort_id', '$cohort',
	      'mixpanel_cohort_name', 'C', 'mixpanel_session_id', '$session',
	      'page_info', jsonb_build_object('total_pages', $total, 'page_count', $n),
	      'members', (SELECT jsonb_agg(jsonb_build_object('mixpanel_distinct_id', '$cohort-' || i))
	                    FROM generate_series(1, 200) i)))) ->> 'status'};
}

# Heap records of each kind logged for a table while one statement ran and committed.
sub heap_records
{
	my ($table, $statement) = @_;
	my $start = sql('SELECT pg_current_wal_insert_lsn()');
	is(sql($statement), 'success', "page applied ($table)");
	my $end = sql('SELECT pg_current_wal_flush_lsn()');
	my $rel = sql("SELECT pg_relation_filenode('cohortsync.$table')");
	my ($multi, $single) = split /\|/, sql(qq{
	    SELECT count(*) FILTER (WHERE resource_manager = 'Heap2' AND record_type LIKE 'MULTI_INSERT%'),
	           count(*) FILTER (WHERE resource_manager = 'Heap' AND record_type LIKE 'INSERT%')
	      FROM pg_get_wal_records_info('$start', '$end')
	     WHERE block_ref LIKE '%/$rel %' OR block_ref LIKE '%/$rel'});
	return ($multi, $single);
}

my ($multi, $single) = heap_records('members', page('add_members', 'fast', 'a1', 1, 1));
cmp_ok($multi, '>=', 1, "new members: multi-inserts ($multi)");
is($single, '0', 'new members: no row-by-row inserts');

($multi, $single) = heap_records('membership_changes', page('add_members', 'fast2', 'a2', 1, 1));
cmp_ok($multi, '>=', 1, "their history: multi-inserts ($multi)");
is($single, '0', 'their history: no row-by-row inserts');

($multi, $single) = heap_records('staged_members', page('members', 'full', 's1', 1, 2));
cmp_ok($multi, '>=', 1, "a staged page: multi-inserts ($multi)");
is($single, '0', 'a staged page: no row-by-row inserts');

# A user's own trigger: the statements write, row by row.
sql(q{CREATE FUNCTION public.noop() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$});
sql(q{CREATE TRIGGER users_own AFTER INSERT ON cohortsync.members
        FOR EACH STATEMENT EXECUTE FUNCTION public.noop()});
sql(q{CREATE TRIGGER users_own AFTER INSERT ON cohortsync.staged_members
        FOR EACH STATEMENT EXECUTE FUNCTION public.noop()});
($multi, $single) = heap_records('members', page('add_members', 'slow', 'a3', 1, 1));
is($multi, '0', 'with a user trigger on members: no multi-inserts');
is($single, '200', 'the statement inserts the 200 members one by one');

($multi, $single) = heap_records('staged_members', page('members', 'full', 's1', 2, 2));
is($multi, '0', 'with a user trigger on staged_members: no multi-inserts');
is($single, '200', 'the statement stages the 200 members one by one');

$node->stop;
done_testing();
