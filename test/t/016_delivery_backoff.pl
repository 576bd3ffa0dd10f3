# Backoff per destination (issue #13, "Retry pressure"): while the destination
# answers every request with 503, the worker sends one request at a time on an
# exponential schedule instead of dozens a second, destination_status shows how
# many failed in a row and until when it waits, and the first success brings
# back full speed, with every record delivered exactly once. Then 429s with a
# Retry-After longer than the schedule's steps: the worker waits as long.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use CsDelivery;

my $ct = start_standin();
my $node = new_delivery_node('backoff', $ct);

sub sql { return $node->safe_psql('postgres', $_[0]); }

# The worker's CPU time so far (utime + stime, seconds), from /proc.
sub cpu_seconds
{
	my ($pid) = @_;
	my @f = split / /, (split /\) /, slurp_file("/proc/$pid/stat"))[1];
	return ($f[11] + $f[12]) / 100;    # fields 14 and 15, in clock ticks (USER_HZ = 100)
}

my $members = 10000;
my $outage = 60;
my $pid = worker_pid($node);

standin_post($ct, '/_control', { status_all => 503 });
my ($t0, $cpu0) = (time(), cpu_seconds($pid));
sql("SELECT page('add_members', 'outage', (SELECT array_agg('m' || g) FROM generate_series(1, $members) g),
                 'c-out', 'Outage')");
is(sql("SELECT count(*) FROM cohortsync.outbox"), 2 * $members, 'outage: 20,000 records queued');

ok(wait_until(20, sub {
	sql("SELECT consecutive_failures >= 3 AND backoff_until > now() FROM cohortsync.destination_status") eq 't' }),
	'outage: destination_status shows failures in a row and when the next request may leave');
like(sql("SELECT last_error FROM cohortsync.destination_status"), qr/^HTTP 503/,
	'outage: and the last error');

sleep($outage - (time() - $t0)) if time() - $t0 < $outage;
my $stats = standin_get($ct, '/_stats');
my ($elapsed, $cpu) = (time() - $t0, cpu_seconds($pid) - $cpu0);
note(sprintf('outage: %d requests in %.0f s (%.2f/s); worker CPU %.2f s (%.1f%% of a core)',
	$stats->{requests}, $elapsed, $stats->{requests} / $elapsed, $cpu, 100 * $cpu / $elapsed));
# 1 s doubling with jitter: about 8 rounds in a minute; the first round may be as
# many requests as max_inflight allows (they were on the wire together)
cmp_ok($stats->{requests}, '<=', 15, "outage: at most 15 requests in $outage s (without backoff: thousands)");
cmp_ok($stats->{requests}, '>=', 4, 'outage: but it keeps probing');
cmp_ok($stats->{max_concurrent_seen}, '<=', 4, 'outage: never more than max_inflight at once');
is(scalar(@{ delivered_records($ct) }), 0, 'outage: nothing arrived');
is(sql("SELECT count(*) FROM cohortsync.failed_records"), '0', 'outage: nothing failed');
cmp_ok(sql("SELECT consecutive_failures FROM cohortsync.destination_status"), '>=', 5,
	'outage: the failures in a row keep counting');

# the outage ends: the next probe (at most 5 minutes away, here well under a
# minute) succeeds, and then everything goes at full speed
standin_post($ct, '/_control', { status_all => undef });
my $t1 = time();
ok(wait_until(90, sub { standin_get($ct, '/_stats')->{records_accepted} > 0 }), 'after: a probe gets through');
my $t2 = time();
ok(outbox_empty($node, 60), 'after: the outbox drains');
my $t3 = time();
note(sprintf('after: first success %.1f s after the outage ended; drained %.1f s later', $t2 - $t1, $t3 - $t2));
cmp_ok($t3 - $t2, '<', 45, 'after: at full speed (20,000 records in under 45 s; before backoff per destination, not in 60)');
is(sql("SELECT consecutive_failures || ' ' || coalesce(backoff_until::text, 'none') FROM cohortsync.destination_status"),
	'0 none', 'after: destination_status shows no backoff');
is_deeply(standin_tally($ct),
	{ map { ("ct-m$_ event Added" => 1, "ct-m$_ profile \$add" => 1) } 1 .. $members },
	'after: every record arrived, exactly once');

#------------------------------------------------------------------------------
# 429 with Retry-After (mParticle sends it): the schedule waits at least that long.
#------------------------------------------------------------------------------
sql("SELECT cohortsync.disconnect_clevertap('ct')");
my $mp = start_standin(kind => 'mparticle');
sql(connect_sql('mparticle', 'mp', $mp->{url}));
# one request at a time from the start, so that every request is a step of the schedule
sql("UPDATE cohortsync.destinations SET max_inflight = 1 WHERE name = 'mp'");
standin_post($mp, '/_control', { status_all => 429, retry_after => 15 });
$t0 = time();
sql("SELECT page('add_members', 'ra', (SELECT array_agg('ra' || g) FROM generate_series(1, $members) g),
                 'c-ra', 'Retry after')");
ok(wait_until(10, sub {
	sql("SELECT backoff_until > now() + interval '10 s' FROM cohortsync.destination_status WHERE name = 'mp'") eq 't' }),
	'429: backoff_until is Retry-After (15 s) away, not the first step (1 s)');
sleep(40 - (time() - $t0)) if time() - $t0 < 40;
$stats = standin_get($mp, '/_stats');
note(sprintf('429 with Retry-After 15: %d requests in %.0f s', $stats->{requests}, time() - $t0));
# honoured: at 0, 15 and 30 s; the schedule alone (1, 2, 4, 8, 16 s) would make 6
cmp_ok($stats->{requests}, '<=', 4, '429: at most 4 requests in 40 s');
standin_post($mp, '/_control', { status_all => undef });
ok(outbox_empty($node, 60), '429: after it, the outbox drains');
is_deeply(standin_tally($mp), { map { ("ra$_ batch Retry after=true" => 1) } 1 .. $members },
	'429: every record arrived, exactly once');

is(worker_pid($node), $pid, 'the same worker throughout');

$node->stop;
done_testing();
