# replay_failed() ends the backoff of the destinations it replayed, once it
# commits. After an outage long enough for cohortsync.max_retry_age to move
# records to failed_records, the destination still backs off (up to 5 minutes,
# or as long as a Retry-After said); a user who fixed it and replays expects
# the records to go out at once, as after a resume. A replay of another
# destination, or one rolled back (whole or to a savepoint), leaves the backoff
# alone; a destination that still fails after the replay backs off again from
# the schedule's first step.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use CsDelivery;

my $node = new_delivery_node('replay', undef, conf => ["cohortsync.max_retry_age = '30s'"]);

sub sql { return $node->safe_psql('postgres', $_[0]); }

# Seconds until the destination's next request may leave; -1 when it does not back off.
sub backoff_left
{
	my ($dest) = @_;
	return sql("SELECT coalesce(floor(extract(epoch FROM backoff_until - now())), -1)
	              FROM cohortsync.destination_status WHERE name = '$dest'");
}

sub delivered { return scalar(@{ delivered_records($_[0]) }); }

# Two mParticle destinations (its stand-in sends Retry-After with a 429). A
# Retry-After of 2 minutes puts a destination a long way into its backoff with
# one failure; the schedule's own steps would take minutes of 503s to get there.
my %mp;
for my $d (qw(mp1 mp2))
{
	$mp{$d} = start_standin(kind => 'mparticle');
	sql(connect_sql('mparticle', $d, $mp{$d}{url}));
}

# An outage that outlasted max_retry_age: records already older than it fail on
# the first 429 and go to failed_records, and both destinations back off.
sub outage
{
	my ($session, $cohort_name, $ids) = @_;
	standin_post($mp{$_}, '/_control', { status_all => 429, retry_after => 120 }) for keys %mp;
	my $before = sql("SELECT count(*) FROM cohortsync.failed_records");
	sql("BEGIN;
	     SELECT page('add_members', '$session', ARRAY['" . join("','", @$ids) . "'], '$session', '$cohort_name');
	     UPDATE cohortsync.outbox SET created_at = created_at - interval '1 hour';
	     COMMIT;");
	my $expected = $before + 2 * @$ids;
	ok(wait_until(30, sub { sql("SELECT count(*) FROM cohortsync.failed_records") == $expected }),
		"$session: the records went to failed_records");
	ok(wait_until(10, sub { backoff_left('mp1') >= 60 && backoff_left('mp2') >= 60 }),
		"$session: both destinations back off for a minute or more");
}

sub tally_of
{
	my ($cohort_name, @ids) = @_;
	return { map { ("$_ batch $cohort_name=true" => 1) } @ids };
}

#------------------------------------------------------------------------------
# One destination at a time.
#------------------------------------------------------------------------------
my @ids = qw(a1 a2 a3);
outage('s1', 'One', \@ids);
standin_post($mp{$_}, '/_control', { status_all => undef }) for keys %mp;

# rolled back, whole or to a savepoint: nothing replayed, no backoff ended
sql("BEGIN; SELECT cohortsync.replay_failed('mp1'); ROLLBACK;");
sql("BEGIN; SAVEPOINT s; SELECT cohortsync.replay_failed('mp1'); ROLLBACK TO SAVEPOINT s; COMMIT;");
sleep 2;    # four polls of the worker
cmp_ok(backoff_left('mp1'), '>=', 50, 'rolled back: mp1 still backs off');
is(sql("SELECT count(*) FROM cohortsync.failed_records WHERE destination = 'mp1'"), '3',
	'rolled back: its records are still failed');

my $t0 = time();
is(sql("SELECT cohortsync.replay_failed('mp2')"), '3', 'mp2: three records replayed');
ok(wait_until(10, sub { delivered($mp{mp2}) == 3 }),
	'mp2: delivered within 10 s, not after its backoff (a minute away)');
note(sprintf('mp2: delivered %.1f s after the replay', time() - $t0));
ok(wait_until(5, sub {
	sql("SELECT consecutive_failures || ' ' || coalesce(backoff_until::text, 'none')
	       FROM cohortsync.destination_status WHERE name = 'mp2'") eq '0 none' }),
	'mp2: destination_status shows no backoff');
cmp_ok(backoff_left('mp1'), '>=', 40, 'mp1: the replay of mp2 left its backoff alone');
is(delivered($mp{mp1}), 0, 'mp1: nothing sent');

$t0 = time();
is(sql("SELECT cohortsync.replay_failed('mp1')"), '3', 'mp1: three records replayed');
ok(wait_until(10, sub { delivered($mp{mp1}) == 3 }),
	'mp1: delivered within 10 s, not after its backoff');
note(sprintf('mp1: delivered %.1f s after the replay', time() - $t0));
ok(wait_until(5, sub { backoff_left('mp1') == -1 }), 'mp1: no backoff');
is_deeply(standin_tally($mp{$_}), tally_of('One', @ids), "$_: every record arrived, once")
  for sort keys %mp;

#------------------------------------------------------------------------------
# Every destination at once (replay_failed() without one), while they still
# fail: each is tried at once and backs off again from the first step.
#------------------------------------------------------------------------------
standin_post($mp{$_}, '/_reset') for keys %mp;
@ids = qw(b1 b2 b3);
outage('s2', 'Two', \@ids);
standin_post($mp{$_}, '/_control', { status_all => 503 }) for keys %mp;
my %requests = map { ($_ => standin_get($mp{$_}, '/_stats')->{requests}) } keys %mp;
is(sql("SELECT cohortsync.replay_failed()"), '6', 'all: six records replayed');
for my $d (sort keys %mp)
{
	# before the replay it backed off for a minute or more: a failure now
	# counted with a backoff under 10 s is one the replay let through
	ok(wait_until(10, sub {
		standin_get($mp{$d}, '/_stats')->{requests} > $requests{$d}
		  && sql("SELECT consecutive_failures >= 1 AND backoff_until < now() + interval '10 s'
		            FROM cohortsync.destination_status WHERE name = '$d'") eq 't' }),
		"all, still failing: $d is tried within 10 s and backs off again from the first steps");
}
standin_post($mp{$_}, '/_control', { status_all => undef }) for keys %mp;
ok(outbox_empty($node, 30), 'all: once healthy, the outbox drains');
is_deeply(standin_tally($mp{$_}), tally_of('Two', @ids), "all: $_ got every record, once")
  for sort keys %mp;
is(sql("SELECT count(*) FROM cohortsync.failed_records"), '0', 'all: nothing failed');

$node->stop;
done_testing();
