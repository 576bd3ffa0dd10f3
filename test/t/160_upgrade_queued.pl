# An upgrade from 0.2.0 with records queued and a full sync half received
# (issues #11, #13), on a preloaded server with the CleverTap stand-in:
#  - before ALTER EXTENSION ... UPDATE the library (0.3.0) delivers nothing
#    while the SQL objects are 0.2.0's and logs why, so the records 0.2.0's
#    trigger queued stay queued;
#  - after it the destination is a 'clevertap' one with its settings, every
#    record queued under 0.2.0 reaches the stand-in exactly once and as it was
#    queued, the full sync's second page completes it and the apply worker
#    applies the swap once, with the right membership and history, and
#    destination_status gives no reason.
#
# The 0.2.0 state is made by 0.2.0's own SQL objects throughout, served by the
# library that runs (the current one): connect_clevertap (0.2.0's plpgsql),
# ingest (C; it stages and swaps in the 0.2.0 layout while the schema has no
# apply_queue, see membership.c) and 0.2.0's outbox trigger _queue_changes,
# which builds the records. No row is written by hand.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CsDelivery;

my $json = JSON::PP->new->canonical(1);
my $ct = start_standin();
my $node = new_delivery_node('upgrade_queued', $ct, version => '0.2.0');

sub sql { return $node->safe_psql('postgres', $_[0]); }

# One webhook page; members carry a CleverTap id and an email.
sub ingest
{
	my ($action, $cohort, $session, $ids, $pg, $total) = @_;
	my $page = {
		action => $action,
		parameters => {
			mixpanel_project_id => 1001,
			mixpanel_cohort_id => $cohort,
			mixpanel_cohort_name => "Cohort $cohort",
			mixpanel_session_id => $session,
			page_info => { total_pages => $total // 1, page_count => $pg // 1 },
			members => [
				map { { mixpanel_distinct_id => $_, '$CleverTap_user_id' => "ct-$_", email => "$_\@example.com" } }
				  @$ids
			] } };
	return sql("SELECT cohortsync.ingest('" . encode_json($page) . "') ->> 'status'");
}

is(sql("SELECT extversion FROM pg_extension WHERE extname = 'cohortsync'"), '0.2.0',
	'the extension is at 0.2.0');

#------------------------------------------------------------------------------
# The state of a 0.2.0 installation
#------------------------------------------------------------------------------
# diffs of cohort 4242, and a one-page full sync of cohort 77 (swapped at once, as
# 0.2.0 did): their changes queue records for "ct"
is(ingest('add_members', '4242', 'd1', [qw(u1 u2 u3)]), 'success', '0.2.0: add_members');
is(ingest('remove_members', '4242', 'd2', ['u2']), 'success', '0.2.0: remove_members');
is(ingest('members', '77', 'fs1', [qw(m1 m2 m3 m4)]), 'success', '0.2.0: a full sync of one page');
is(sql("SELECT state FROM cohortsync.sync_sessions WHERE session_id = 'fs1'"), 'completed',
	'0.2.0: the one-page full sync is swapped at once');
# page 1 of 2 of the next full sync of cohort 77: staged, not applied
is(ingest('members', '77', 'fs2', [qw(m3 m4 m5)], 1, 2), 'success', '0.2.0: page 1 of 2 of a full sync');
is(sql("SELECT state || ' ' || pages_received FROM cohortsync.sync_sessions WHERE session_id = 'fs2'"),
	'receiving 1', '0.2.0: the full sync waits for its page 2');
is(sql("SELECT count(*) FROM cohortsync.staged_members WHERE session_id = 'fs2'"), '3',
	'0.2.0: page 1 is staged');

# 8 changes (u1 u2 u3 added, u2 removed, m1..m4 added), an event and a profile each
my $queued = sql("SELECT count(*) FROM cohortsync.outbox WHERE destination = 'ct'");
is($queued, '16', '0.2.0: the outbox holds the records of 8 changes');
my @queued_records = map { $json->encode(decode_json($_)) }
  split /\n/, sql("SELECT record FROM cohortsync.outbox ORDER BY id");
my $last_change = sql("SELECT max(id) FROM cohortsync.membership_changes");

# the library delivers nothing while the SQL objects are older, and says why
ok( $node->wait_for_log(
		qr/the extension's SQL objects in database "postgres" are version 0\.2\.0, the library 0\.3\.0; nothing is delivered/),
	'before the update: the worker says it waits for ALTER EXTENSION ... UPDATE');
sleep 2;
is(scalar @{ delivered_records($ct) }, 0, 'before the update: nothing reached the stand-in');
is(sql("SELECT count(*) FROM cohortsync.outbox"), $queued, 'before the update: every record is still queued');

#------------------------------------------------------------------------------
# ALTER EXTENSION cohortsync UPDATE
#------------------------------------------------------------------------------
sql("ALTER EXTENSION cohortsync UPDATE");
is(sql("SELECT extversion FROM pg_extension WHERE extname = 'cohortsync'"), '0.3.0', 'updated to 0.3.0');
is( sql(q{SELECT concat_ws('|', kind, account_id, region, api_url, identity_property, event_name,
                          cohorts_property, settings, state, batch_size IS NULL, max_inflight IS NULL)
            FROM cohortsync.destinations WHERE name = 'ct'}),
	"clevertap|ACC|eu1|$ct->{url}|\$CleverTap_user_id|Partner Sync|Mixpanel Cohorts|{}|active|t|t",
	'the destination is of kind clevertap, with its settings');

# Who writes the history of the full sync fs2, and in how many transactions.
sql(q{
CREATE TABLE public.fs2_writers (xid xid8, backend_type text, changes bigint);
CREATE FUNCTION public.note_fs2_writer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.fs2_writers
  SELECT pg_current_xact_id(), (SELECT a.backend_type FROM pg_stat_activity a WHERE a.pid = pg_backend_pid()),
         count(*)
    FROM new_changes WHERE session_id = 'fs2' HAVING count(*) > 0;
  RETURN NULL;
END $$;
CREATE TRIGGER note_fs2_writer AFTER INSERT ON cohortsync.membership_changes
  REFERENCING NEW TABLE AS new_changes
  FOR EACH STATEMENT EXECUTE FUNCTION public.note_fs2_writer();
});

# page 2 completes the full sync: m1 m2 leave, m5 m6 join
is(ingest('members', '77', 'fs2', ['m6'], 2, 2), 'success', '0.3.0: page 2 of 2');
ok($node->poll_query_until('postgres', "SELECT state FROM cohortsync.sync_sessions WHERE session_id = 'fs2'",
		'completed'), 'the full sync completes');
is(sql("SELECT (applying_since IS NOT NULL) || ' ' || (apply_duration IS NOT NULL) FROM cohortsync.sync_sessions WHERE session_id = 'fs2'"),
	'true true', 'its swap was queued and applied');
is(sql("SELECT count(DISTINCT xid) || ' ' || string_agg(DISTINCT backend_type, ',') || ' ' || sum(changes) FROM public.fs2_writers"),
	'1 cohortsync apply 4', 'by the apply worker, in one transaction, once');
is(sql("SELECT count(*) FROM cohortsync.apply_queue"), '0', 'the apply queue is empty');
is(sql("SELECT count(*) FROM cohortsync.staged_members"), '0', 'nothing is left staged');
is(sql("SELECT string_agg(distinct_id, ',' ORDER BY distinct_id) FROM cohortsync.members WHERE cohort_id = '77'"),
	'm3,m4,m5,m6', 'the membership is the full sync\'s');
is(sql("SELECT member_count FROM cohortsync.cohorts WHERE cohort_id = '77'"), '4', 'and member_count says so');
is( sql(q{SELECT string_agg(session_id || ':' || distinct_id || ':' || change, ',' ORDER BY session_id, distinct_id)
            FROM cohortsync.membership_changes WHERE cohort_id = '77'}),
	'fs1:m1:added,fs1:m2:added,fs1:m3:added,fs1:m4:added,fs2:m1:removed,fs2:m2:removed,fs2:m5:added,fs2:m6:added',
	'the history has every change once');

#------------------------------------------------------------------------------
# Delivery
#------------------------------------------------------------------------------
my $new_changes = sql("SELECT count(*) FROM cohortsync.membership_changes WHERE id > $last_change");
is($new_changes, '4', 'the update and the swap made 4 changes');
ok(outbox_empty($node, 60), 'the outbox drains');
my $received = delivered_records($ct);
is(scalar @$received, $queued + 2 * $new_changes,
	'the stand-in received the queued records and those of the swap, no more');
my %got;
$got{ canonical($_) }++ for @$received;
my @not_once = grep { ($got{$_} // 0) != 1 } @queued_records;
is(scalar @not_once, 0, 'every record queued under 0.2.0 arrived exactly once, as it was queued')
  or diag explain { not_once => \@not_once };
my $tally = standin_tally($ct);
is( join(',', map { "$_=$tally->{$_}" } grep { /^ct-m/ } sort keys %$tally),
	'ct-m1 event Added=1,ct-m1 event Removed=1,ct-m1 profile $add=1,ct-m1 profile $remove=1,'
	  . 'ct-m2 event Added=1,ct-m2 event Removed=1,ct-m2 profile $add=1,ct-m2 profile $remove=1,'
	  . 'ct-m3 event Added=1,ct-m3 profile $add=1,ct-m4 event Added=1,ct-m4 profile $add=1,'
	  . 'ct-m5 event Added=1,ct-m5 profile $add=1,ct-m6 event Added=1,ct-m6 profile $add=1',
	'every change of cohort 77, before the update and by the swap after it, arrived once');

is(sql("SELECT coalesce(reason, '(none)') FROM cohortsync.destination_status WHERE name = 'ct'"), '(none)',
	'destination_status gives no reason');
is(sql("SELECT string_agg(check_name, ',') FROM cohortsync.status() WHERE NOT ok"), '',
	'cohortsync.status() finds nothing wrong');

done_testing();
