# Dump and restore (issue #12): pg_dump of a database using cohortsync, restored
# with pg_restore (custom and directory formats, --jobs) into a fresh database,
# gives back exactly the same state; the worker then delivers exactly what was
# pending, and nothing else; the next ingest works (sequences continue); a dump
# without the passcodes restores as README.md documents.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CsDelivery;

my $ct = start_standin();
my $node = new_delivery_node('dump', $ct, dbname => 'csdb', conf => ["cohortsync.database = 'csdb'"]);
my $dir = PostgreSQL::Test::Utils::tempdir();

sub sql { my ($db, $q) = @_; return $node->safe_psql($db, $q); }

#------------------------------------------------------------------------------
# A state with everything: delivered history, records pending for a paused
# destination, a destination connected later, failed records, a half-received
# full sync (staged rows), finished and unfinished sessions.
#------------------------------------------------------------------------------
sql('csdb', q{SELECT page('add_members', 'T', ARRAY['A', 'B', 'C', 'D']);
    SELECT page('remove_members', 'T+30', ARRAY['B', 'D']);});
ok(outbox_empty($node, 30, 'csdb'), 'state: the first changes are delivered');
ok(wait_until(20, sub { sql('csdb', "SELECT reason IS NULL FROM cohortsync.destination_status") eq 't' }),
	'status: a served, active destination with nothing in the way has no reason');
is(sql('csdb', "SELECT string_agg(check_name || '=' || ok, ',' ORDER BY check_name) FROM cohortsync.status()"),
	'delivery worker=true,destination ct=true,history retention=true,versions=true',
	'status(): every check passes while the worker serves the database');

sql('csdb', q{SELECT cohortsync.pause_destination('ct');
    SELECT page('add_members', 'T+60', ARRAY['E', 'F']);});
sql('csdb', "BEGIN; SET LOCAL log_statement = 'none';
    SELECT cohortsync.connect_clevertap('ct2', 'ACC', '$PASSCODE', 'eu1', '$ct->{url}');
    SELECT cohortsync.pause_destination('ct2'); COMMIT;");
sql('csdb', q{SELECT page('remove_members', 'T+90', ARRAY['A']);
    SELECT page('add_members', 'T+90', ARRAY['G'], '77', 'Other cohort');
    SELECT page('members', 'full-1', ARRAY['C', 'H'], '4242', 'Power users');});
# the last page is page 1 of 1: a full sync that completed. Now one that has not:
sql('csdb', q{SELECT cohortsync.ingest(jsonb_build_object('action', 'members', 'parameters',
    jsonb_build_object('mixpanel_project_id', 1001, 'mixpanel_cohort_id', '77',
      'mixpanel_session_id', 'full-2', 'page_info', jsonb_build_object('total_pages', 2, 'page_count', 1),
      'members', jsonb_build_array(jsonb_build_object('mixpanel_distinct_id', 'G'),
                                   jsonb_build_object('mixpanel_distinct_id', 'I')))))});
# CleverTap refused one record of ct
sql('csdb', q{WITH gone AS (DELETE FROM cohortsync.outbox
                      WHERE id = (SELECT min(id) FROM cohortsync.outbox WHERE destination = 'ct') RETURNING *)
    INSERT INTO cohortsync.failed_records (id, destination, identity, record, change_id, created_at, attempts, code, message)
    SELECT id, destination, identity, record, change_id, created_at, 1, 516, 'refused' FROM gone});

my $pending_ct = sql('csdb', "SELECT count(*) FROM cohortsync.outbox WHERE destination = 'ct'");
my $pending_ct2 = sql('csdb', "SELECT count(*) FROM cohortsync.outbox WHERE destination = 'ct2'");
cmp_ok($pending_ct, '>', 0, "state: $pending_ct records pending for ct");
cmp_ok($pending_ct2, '>', 0, "state: $pending_ct2 records pending for ct2, connected later");
is(sql('csdb', 'SELECT count(*) FROM cohortsync.staged_members'), '2', 'state: two staged members');
is(sql('csdb', 'SELECT count(*) FROM cohortsync.failed_records'), '1', 'state: one failed record');

# Every table the extension dumps, and every sequence, as one digest each.
my $digest_sql = q{
SELECT string_agg(format('%s %s', c.relname, cohortsync_test_digest(c.oid)), E'\n' ORDER BY c.relname)
  FROM pg_extension e, unnest(e.extconfig) x(oid) JOIN pg_class c ON c.oid = x.oid
 WHERE e.extname = 'cohortsync'};
my $digest_fn = q{
CREATE FUNCTION public.cohortsync_test_digest(rel oid) RETURNS text LANGUAGE plpgsql AS $$
DECLARE r text;
BEGIN
  IF (SELECT relkind FROM pg_class WHERE oid = rel) = 'S' THEN
    EXECUTE format('SELECT last_value || '' '' || is_called FROM %s', rel::regclass) INTO r;
  ELSE
    EXECUTE format('SELECT count(*) || '' '' || coalesce(md5(string_agg(t::text, E''\n'' ORDER BY t::text)), '''') FROM %s t',
                   rel::regclass) INTO r;
  END IF;
  RETURN r;
END $$;};

# every sequence of the extension is dumped with its value
is(sql('csdb', q{SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_depend d
                  JOIN pg_class c ON c.oid = d.objid AND d.classid = 'pg_class'::regclass
                 WHERE d.refclassid = 'pg_extension'::regclass
                   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'cohortsync')
                   AND c.relkind = 'S'
                   AND NOT c.oid = ANY (coalesce((SELECT extconfig FROM pg_extension WHERE extname = 'cohortsync'), '{}'))}),
	'', 'every sequence of the extension is in extconfig (dumped with its value)');

sql('csdb', $digest_fn);
my $before = sql('csdb', $digest_sql);
my @expected_records = sort split /\n/, sql('csdb',
	"SELECT record::text FROM cohortsync.outbox ORDER BY id");
my $failed_before = sql('csdb', 'SELECT id, record FROM cohortsync.failed_records');

#------------------------------------------------------------------------------
# Dump in custom and directory format; restore each into a fresh database,
# serially and with --jobs 2: pg_restore exits 0 and every table is the same.
#------------------------------------------------------------------------------
$node->command_ok([ 'pg_dump', '-Fc', '-f', "$dir/dump.fc", '-d', 'csdb' ], 'pg_dump -Fc');
$node->command_ok([ 'pg_dump', '-Fd', '-j', '2', '-f', "$dir/dump.d", '-d', 'csdb' ], 'pg_dump -Fd -j 2');

my @restores = (
	[ 'r_fc',   [ "$dir/dump.fc" ] ],
	[ 'r_fc_j', [ '-j', '2', "$dir/dump.fc" ] ],
	[ 'r_fd',   [ "$dir/dump.d" ] ],
	[ 'r_fd_j', [ '-j', '2', "$dir/dump.d" ] ]);
for my $r (@restores)
{
	my ($db, $args) = @$r;
	sql('postgres', "CREATE DATABASE $db");
	$node->command_ok([ 'pg_restore', '-d', $db, @$args ], "pg_restore @$args exits 0");
	is(sql($db, $digest_sql), $before, "$db: every table and sequence of the extension is the same");
	is(sql($db, q{SELECT string_agg(name || ' ' || state, ', ' ORDER BY name) FROM cohortsync.destinations}),
		'ct paused, ct2 paused', "$db: the destinations, paused");
}

# the next ingest in a restored database works: the sequences continue past their rows
is(sql('r_fc_j', "SELECT page('add_members', 'after', ARRAY['J']) ->> 'status'"), 'success',
	'restored: the next ingest works');
ok(sql('r_fc_j', q{SELECT (SELECT max(id) FROM cohortsync.membership_changes WHERE session_id = 'after')
                        > (SELECT max(id) FROM cohortsync.membership_changes WHERE session_id <> 'after')
                    AND (SELECT count(*) FROM cohortsync.outbox) = }
	. (scalar(@expected_records) + 4)) eq 't',
	'restored: its change and records come after the restored ones');

#------------------------------------------------------------------------------
# The worker serves a restored database: drop csdb, restore it under its name,
# resume: the stand-in receives exactly the records that were pending.
#------------------------------------------------------------------------------
sql('postgres', 'DROP DATABASE csdb');
sql('postgres', 'CREATE DATABASE csdb');
$node->command_ok([ 'pg_restore', '-d', 'csdb', '-j', '2', "$dir/dump.fc" ], 'pg_restore into a new csdb');
is(sql('csdb', $digest_sql), $before, 'csdb restored: the same state');
ok(wait_until(40, sub {
	sql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'cohortsync delivery' AND datname = 'csdb'") eq '1' }),
	'csdb restored: the delivery worker connects to it');
standin_post($ct, '/_reset');
sql('csdb', q{SELECT cohortsync.resume_destination('ct'); SELECT cohortsync.resume_destination('ct2');});
ok(outbox_empty($node, 60, 'csdb'), 'csdb restored: the outbox drains');
sleep 1;
is_deeply([ sort map { canonical($_) } @{ delivered_records($ct) } ],
	[ sort map { canonical(decode_json($_)) } @expected_records ],
	'csdb restored: exactly the pending records arrive, each once, and nothing else');
is(sql('csdb', 'SELECT id, record FROM cohortsync.failed_records'), $failed_before,
	'csdb restored: the failed record is kept');

standin_post($ct, '/_reset');
sql('csdb', "SELECT page('add_members', 'after', ARRAY['K'])");
ok(outbox_empty($node, 30, 'csdb'), 'csdb restored: a new change is delivered');
is_deeply([ sort map { "$_->{identity} $_->{type}" } @{ delivered_records($ct) } ],
	[ 'ct-K event', 'ct-K event', 'ct-K profile', 'ct-K profile' ],
	'csdb restored: to both destinations, and nothing else');

#------------------------------------------------------------------------------
# A dump without the passcodes, as README.md documents it.
#------------------------------------------------------------------------------
$node->command_ok([ 'pg_dump', '-Fc', '--exclude-table-data=cohortsync.destination_secrets',
		'-f', "$dir/nopass.fc", '-d', 'csdb' ], 'pg_dump without the passcodes');
sql('postgres', 'CREATE DATABASE r_nopass');
$node->command_ok([ 'pg_restore', '-d', 'r_nopass', "$dir/nopass.fc" ], 'pg_restore of it exits 0');
is(sql('r_nopass', 'SELECT count(*) FROM cohortsync.destination_secrets'), '0', 'no passcode was restored');
like(sql('r_nopass', "SELECT reason FROM cohortsync.destination_status WHERE name = 'ct'"),
	qr/^no delivery worker serves this database: cohortsync.database is "csdb"; no passcode is stored: call cohortsync.set_clevertap_passcode\(\)$/,
	'status: a database the worker does not serve, and a destination without passcode, say so');
sql('r_nopass', "BEGIN; SET LOCAL log_statement = 'none';
    SELECT cohortsync.set_clevertap_passcode('ct', '$PASSCODE'); COMMIT;");
is(sql('r_nopass', 'SELECT count(*) FROM cohortsync.destination_secrets'), '1',
	'set_clevertap_passcode gives a restored destination its passcode back');
unlike(sql('r_nopass', "SELECT reason FROM cohortsync.destination_status WHERE name = 'ct'"),
	qr/passcode/, 'status: the passcode is no longer missing');

$node->stop;
done_testing();
