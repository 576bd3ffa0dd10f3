# Delivery to the CleverTap stand-in: exact records, fallback, batching,
# partial answers, retries, pause on 401, per-identity order.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use CsDelivery;

my $ct = start_standin();
my $node = new_delivery_node('delivery', $ct);

sub sql { return $node->safe_psql('postgres', $_[0]); }

#------------------------------------------------------------------------------
# The A-F scenario of Mixpanel's webhook documentation arrives exactly.
#------------------------------------------------------------------------------
sql(q{SELECT page('add_members', 'T', ARRAY['A', 'B', 'C', 'D']);
    SELECT page('remove_members', 'T', ARRAY[]::text[]);
    SELECT page('add_members', 'T+30', ARRAY['E', 'F']);
    SELECT page('remove_members', 'T+30', ARRAY['B', 'D']);
    SELECT page('add_members', 'T+60', ARRAY[]::text[]);
    SELECT page('remove_members', 'T+60', ARRAY[]::text[]);
    SELECT page('add_members', 'T+30', ARRAY['E', 'F']);
    SELECT page('remove_members', 'T+30', ARRAY['B', 'D']);});
ok(outbox_empty($node, 30), 'A-F: the outbox drains');

my @expected;
for my $line (split /\n/, sql(
	"SELECT distinct_id, change, floor(extract(epoch FROM changed_at))::bigint
	   FROM cohortsync.membership_changes ORDER BY id"))
{
	my ($id, $change, $ts) = split /\|/, $line;
	my $added = $change eq 'added';
	push @expected, {
		identity => "ct-$id", type => 'event', ts => 0 + $ts, evtName => 'Partner Sync',
		evtData => {
			'Partner Segment Name' => 'Power users',
			'Action' => $added ? 'Added' : 'Removed',
			'Partner Segment ID' => '4242',
			'CT Source' => 'Mixpanel',
			'Partner Name' => 'Mixpanel' } };
	push @expected, {
		identity => "ct-$id", type => 'profile', ts => 0 + $ts,
		profileData => $added
		? {
			'Mixpanel Cohorts' => { '$add' => ['Power users'] },
			Email => lc($id) . '@example.com',
			Phone => '+155501000' . (ord($id) % 10),
			Name => "$id Doe" }
		: { 'Mixpanel Cohorts' => { '$remove' => ['Power users'] } } };
}
is(scalar(@expected), 16, 'A-F: eight changes');
is_deeply([ sort map { canonical($_) } @{ delivered_records($ct) } ],
	[ sort map { canonical($_) } @expected ],
	'A-F: exactly the expected records arrive, each once');
my $recs = delivered_records($ct);
my %pos;
for my $i (0 .. $#$recs)
{
	my $r = $recs->[$i];
	$pos{"$r->{identity}/$r->{evtData}{Action}"} = $i if $r->{type} eq 'event';
}
ok($pos{'ct-B/Added'} < $pos{'ct-B/Removed'} && $pos{'ct-D/Added'} < $pos{'ct-D/Removed'},
	'A-F: B and D are added before they are removed');
is(sql("SELECT state || ' ' || pending || ' ' || in_flight || ' ' || delivered || ' ' || failed
       || ' ' || (last_success_at IS NOT NULL) FROM cohortsync.destination_status"),
	'active 0 0 16 0 true', 'A-F: the status view counts 16 delivered');

#------------------------------------------------------------------------------
# Identity fallback: no $CleverTap_user_id, mixpanel_distinct_id is the identity.
#------------------------------------------------------------------------------
standin_post($ct, '/_reset');
sql("SELECT page('add_members', 'fb', ARRAY['nocid-1'], '77', 'Fallback')");
ok(outbox_empty($node, 30), 'fallback: delivered');
is_deeply([ sort map { "$_->{identity} $_->{type}" } @{ delivered_records($ct) } ],
	[ 'nocid-1 event', 'nocid-1 profile' ],
	'fallback: the identity is mixpanel_distinct_id');

#------------------------------------------------------------------------------
# A commit wakes the worker: with the safety-net poll at 10 minutes, a change
# still arrives at once.
#------------------------------------------------------------------------------
sql("ALTER SYSTEM SET cohortsync.poll_interval = '10min'");
sql("SELECT pg_reload_conf()");
sleep 1;
standin_post($ct, '/_reset');
my $t0 = time();
sql("SELECT page('add_members', 'w', ARRAY['w1'], '78', 'Wake')");
ok(wait_until(10, sub { scalar(@{ delivered_records($ct) }) == 2 }), 'wake: delivered');
my $latency = time() - $t0;
note sprintf('wake: delivered %.3f s after the commit', $latency);
cmp_ok($latency, '<', 2, 'wake: without waiting for the poll');
sql("ALTER SYSTEM RESET cohortsync.poll_interval");
sql("SELECT pg_reload_conf()");

#------------------------------------------------------------------------------
# Batching: 2500 changes are 5000 records, in requests of at most 1000.
#------------------------------------------------------------------------------
standin_post($ct, '/_reset');
sql("SELECT page('add_members', 'big', (SELECT array_agg('big' || g) FROM generate_series(1, 2500) g), '88', 'Big')");
ok(outbox_empty($node, 60), 'batching: delivered');
$recs = delivered_records($ct);
my %per_request;
$per_request{ $_->{_seq} }++ for @$recs;
is(scalar(@$recs), 5000, 'batching: 5000 records arrive');
my %uniq = map { canonical($_) => 1 } @$recs;
is(scalar(keys %uniq), 5000, 'batching: none twice');
cmp_ok(scalar(keys %per_request), '>=', 5, 'batching: in at least 5 requests');
cmp_ok((sort { $b <=> $a } values %per_request)[0], '<=', 1000, 'batching: none over 1000 records');

#------------------------------------------------------------------------------
# Partial answers: refused records go to failed_records, 555 is retried.
#------------------------------------------------------------------------------
standin_post($ct, '/_reset');
standin_post($ct, '/_control', { record_codes => { 'ct-bad1' => 516, 'ct-later1' => 555 } });
sql("SELECT page('add_members', 'p', ARRAY['bad1', 'later1', 'good1', 'good2'], '99', 'Partial')");
ok(wait_until(30, sub {
	sql("SELECT count(*) FROM cohortsync.outbox WHERE attempts > 0 AND identity = 'ct-later1'") eq '2' }),
	'partial: the 555 records wait for a retry');
is(sql("SELECT string_agg(identity || ' ' || (record->>'type') || ' ' || code || ' ' || message, ', ' ORDER BY id)
        FROM cohortsync.failed_records"),
	'ct-bad1 event 516 Profile data is incorrect. Phone number is not valid., '
	  . 'ct-bad1 profile 516 Profile data is incorrect. Phone number is not valid.',
	'partial: the refused records are in failed_records with code and message');
standin_post($ct, '/_control', { record_codes => { 'ct-bad1' => 516 } });
ok(outbox_empty($node, 30), 'partial: the 555 records go through on a retry');
is_deeply([ sort map { "$_->{identity} $_->{type}" } @{ delivered_records($ct) } ],
	[ map { ("ct-$_ event", "ct-$_ profile") } qw(good1 good2 later1) ],
	'partial: everything else is delivered, once');
is(sql("SELECT cohortsync.replay_failed()"), '2', 'partial: failed records can be replayed');
standin_post($ct, '/_control', { record_codes => undef });
ok(outbox_empty($node, 30), 'partial: replayed records are delivered');
sql("DELETE FROM cohortsync.failed_records");

#------------------------------------------------------------------------------
# A change whose records are retried (555) is not overtaken by the next change
# of the same user: the removal waits, unsent, until the addition went through.
#------------------------------------------------------------------------------
standin_post($ct, '/_reset');
sql("SELECT cohortsync.pause_destination('ct')");
sql("SELECT page('add_members', 'z1', ARRAY['z1'], '98', 'Wait')");
sql("SELECT page('remove_members', 'z2', ARRAY['z1'], '98', 'Wait')");
standin_post($ct, '/_control', { record_codes => { 'ct-z1' => 555 } });
sql("SELECT cohortsync.resume_destination('ct')");
ok(wait_until(20, sub {
	sql("SELECT count(*) FROM cohortsync.outbox WHERE identity = 'ct-z1' AND attempts > 0") eq '2' }),
	'555 order: the addition is retried');
is(sql("SELECT count(*) FROM cohortsync.outbox WHERE identity = 'ct-z1' AND attempts = 0
          AND record->'evtData'->>'Action' = 'Removed' OR record->'profileData'->'Mixpanel Cohorts' ? '\$remove'"),
	'2', '555 order: the removal was never sent meanwhile');
standin_post($ct, '/_control', { record_codes => undef });
ok(outbox_empty($node, 30), '555 order: both delivered in the end');
is_deeply([ map { $_->{evtData}{Action} } grep { $_->{type} eq 'event' } @{ delivered_records($ct) } ],
	[ 'Added', 'Removed' ], '555 order: Added before Removed');

#------------------------------------------------------------------------------
# 429 and 503 are retried with nothing lost and nothing duplicated.
#------------------------------------------------------------------------------
standin_post($ct, '/_reset');
standin_post($ct, '/_control', { fail_next => 2, fail_status => 503 });
sql("SELECT page('add_members', 'r1', ARRAY['r1', 'r2', 'r3'], '11', 'Retry')");
ok(wait_until(20, sub { standin_get($ct, '/_stats')->{by_status}{503} // 0 >= 2 }), 'retry: two 503s');
standin_post($ct, '/_control', { fail_next => 2, fail_status => 429 });
sql("SELECT page('remove_members', 'r2', ARRAY['r1'], '11', 'Retry')");
ok(outbox_empty($node, 40), 'retry: everything is delivered in the end');
my $stats = standin_get($ct, '/_stats');
cmp_ok($stats->{by_status}{429} // 0, '>=', 1, 'retry: 429 was answered too');
$recs = delivered_records($ct);
is(scalar(@$recs), 8, 'retry: 8 records');
%uniq = map { canonical($_) => 1 } @$recs;
is(scalar(keys %uniq), 8, 'retry: none twice');
like(sql("SELECT last_error FROM cohortsync.destination_status"), qr/^HTTP (503|429)/,
	'retry: the last error is visible');

#------------------------------------------------------------------------------
# A garbage 200 and a reset connection are retried too.
#------------------------------------------------------------------------------
standin_post($ct, '/_reset');
standin_post($ct, '/_control', { garbage => 1, reset => 1 });
sql("SELECT page('add_members', 'g1', ARRAY['g1'], '14', 'Garbage')");
ok(outbox_empty($node, 30), 'garbage and reset: delivered in the end');
$stats = standin_get($ct, '/_stats');
is(($stats->{by_status}{reset} // 0) . ' ' . scalar(@{ delivered_records($ct) }), '1 2',
	'garbage and reset: one reset, then the records arrive');

#------------------------------------------------------------------------------
# A request that times out is retried; so is a refused connection.
#------------------------------------------------------------------------------
standin_post($ct, '/_reset');
sql("ALTER SYSTEM SET cohortsync.request_timeout = '1s'");
sql("SELECT pg_reload_conf()");
sleep 1;
standin_post($ct, '/_control', { hang => JSON::PP::true });
sql("SELECT page('add_members', 'to', ARRAY['to1'], '16', 'Timeout')");
ok(wait_until(20, sub {
	sql("SELECT coalesce(last_error, '') FROM cohortsync.destination_status WHERE name = 'ct'") =~ /Timeout/i }),
	'timeout: the request times out, visibly');
standin_post($ct, '/_control', { hang => JSON::PP::false });
sql("ALTER SYSTEM RESET cohortsync.request_timeout");
sql("SELECT pg_reload_conf()");
ok(outbox_empty($node, 30), 'timeout: delivered on a retry');
is(scalar(@{ delivered_records($ct) }), 2, 'timeout: once');

sql("SELECT cohortsync.connect_clevertap('down', 'ACC', 'cs-secret-down', 'eu1', 'http://127.0.0.1:1')");
sql("SELECT page('add_members', 'dn', ARRAY['dn1'], '17', 'Down')");
ok(wait_until(20, sub {
	sql("SELECT coalesce(last_error, '') FROM cohortsync.destination_status WHERE name = 'down'") =~ /connect/i }),
	'connection refused: retried, with the error visible');
is(sql("SELECT pending FROM cohortsync.destination_status WHERE name = 'down'"), '2',
	'connection refused: the records are kept');
sql("SELECT cohortsync.disconnect_clevertap('down')");
ok(outbox_empty($node, 30), 'disconnect: takes its queue with it');

#------------------------------------------------------------------------------
# A 400 splits the batch to isolate the bad record; the others go through,
# in order.
#------------------------------------------------------------------------------
standin_post($ct, '/_reset');
sql("SELECT cohortsync.pause_destination('ct')");
sql("SELECT page('add_members', 'h1', ARRAY['h1', 'h2'], '15', 'Split')");
my @queued = split /\n/, sql("SELECT (record->>'identity') || ' ' || (record->>'type')
                                FROM cohortsync.outbox ORDER BY id");
standin_post($ct, '/_control', { fail_next => 3, fail_status => 400 });
sql("SELECT cohortsync.resume_destination('ct')");
ok(outbox_empty($node, 30), '400: settled');
is(sql("SELECT count(*) || ' ' || min(code) FROM cohortsync.failed_records"), '1 400',
	'400: one record is isolated as failed');
is(sql("SELECT record->>'identity' || ' ' || (record->>'type') FROM cohortsync.failed_records"),
	$queued[0], '400: the first one, found by halving (4 -> 2 -> 1)');
is_deeply([ map { "$_->{identity} $_->{type}" } @{ delivered_records($ct) } ],
	[ @queued[ 1 .. 3 ] ], '400: the others arrive, in order');
sql("DELETE FROM cohortsync.failed_records");

#------------------------------------------------------------------------------
# 401 pauses the destination, keeping every record; resume delivers them.
#------------------------------------------------------------------------------
standin_post($ct, '/_reset');
standin_post($ct, '/_control', { accounts => [ [ 'ACC', 'cs-secret-new-passcode' ] ] });
sql("SELECT page('add_members', 'a1', ARRAY['k1', 'k2'], '12', 'Auth')");
ok(wait_until(20, sub { sql("SELECT state FROM cohortsync.destination_status") eq 'paused' }),
	'401: the destination pauses');
like(sql("SELECT state_reason FROM cohortsync.destination_status"),
	qr/^CleverTap answered HTTP 401: Account ID is not valid/, '401: and says why');
sql("SELECT page('remove_members', 'a2', ARRAY['k1'], '12', 'Auth')");
is(sql("SELECT pending FROM cohortsync.destination_status"), '6', '401: every record is kept');
# log_statement = all logs statements as typed (see docs/delivery.md); apart
# from those, no line of the log may hold a passcode, even a failing call's
$node->psql('postgres', "SET log_statement = 'none';
  SELECT cohortsync.connect_clevertap('x', 'ACC', 'cs-secret-err-passcode', 'nowhere')");
my @lines = grep { !/ statement: / } split /\n/, slurp_file($node->logfile);
is_deeply([ grep { /cs-secret/ } @lines ], [],
	'401: no passcode in the server log, not even for a failing call');
sql("SELECT cohortsync.set_clevertap_passcode('ct', 'cs-secret-new-passcode')");
sql("SELECT cohortsync.resume_destination('ct')");
ok(outbox_empty($node, 30), '401: resume delivers everything');
$recs = delivered_records($ct);
is(scalar(@$recs), 6, '401: 6 records after resume');
is(sql("SELECT state FROM cohortsync.destination_status"), 'active', '401: active again');

#------------------------------------------------------------------------------
# Per-identity order under concurrency: 8 requests in flight, slow answers,
# every identity added then removed; Added always arrives first.
#------------------------------------------------------------------------------
standin_post($ct, '/_reset');
sql("ALTER SYSTEM SET cohortsync.max_inflight = 8");
sql("ALTER SYSTEM SET cohortsync.batch_size = 20");
sql("SELECT pg_reload_conf()");
standin_post($ct, '/_control', { delay_ms => 150 });
sleep 1;
sql("SELECT page('add_members', 'o1', (SELECT array_agg('o' || g) FROM generate_series(1, 200) g), '13', 'Order')");
sql("SELECT page('remove_members', 'o2', (SELECT array_agg('o' || g) FROM generate_series(1, 200, 2) g), '13', 'Order')");
sql("SELECT page('add_members', 'o3', (SELECT array_agg('o' || g) FROM generate_series(1, 200, 4) g), '13', 'Order')");
ok(outbox_empty($node, 90), 'order: delivered');
$stats = standin_get($ct, '/_stats');
cmp_ok($stats->{max_concurrent_seen}, '>', 1, 'order: requests were concurrent');
cmp_ok($stats->{max_concurrent_seen}, '<=', 8, 'order: never more than max_inflight');
$recs = delivered_records($ct);
is(scalar(@$recs), 2 * (200 + 100 + 50), 'order: every record arrived once');
my (%seen, $bad, %inflight_same);
for my $r (@$recs)
{
	next unless $r->{type} eq 'event';
	push @{ $seen{ $r->{identity} } }, [ $r->{evtData}{Action}, $r->{_seq} ];
}
for my $id (keys %seen)
{
	my @ev = @{ $seen{$id} };
	my $n = int(substr($id, 4));
	my @want = ('Added');
	push @want, 'Removed' if $n % 2 == 1;
	push @want, 'Added' if $n % 4 == 1;
	my @got = map { $_->[0] } @ev;
	$bad++ unless "@got" eq "@want";
	for my $i (1 .. $#ev) { $bad++ if $ev[$i][1] < $ev[$i - 1][1]; }
}
is($bad // 0, 0, 'order: every identity\'s events arrive in the order they happened');
standin_post($ct, '/_control', { delay_ms => 0 });

$node->stop;
done_testing();
