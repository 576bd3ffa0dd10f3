# A streaming standby sends nothing and applies no queued full sync; once
# promoted, it applies and delivers. Promoted in the middle of a backlog the
# primary was sending, it resumes where the primary left it, without sending
# again what the destination had acknowledged. Each time to a destination of
# every kind (CleverTap's "ct" and one of each other kind, each at its own
# stand-in), all connected at once.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CsDelivery;

my $ct = start_standin();
# The primary's worker watches "postgres", where the extension is not: the
# primary sends nothing. The standby is told to watch "csdb", which holds the
# extension, the destination and the queued records, so it would send if it could.
my $primary = new_delivery_node('primary', $ct, dbname => 'csdb', init => { allows_streaming => 1 });
my ($standin, $dest) = connect_every_kind($primary, $ct, 'csdb');
$primary->backup('b1');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b1', has_streaming => 1);
$standby->append_conf('postgresql.conf', "cohortsync.database = 'csdb'\n");
$standby->start;

$primary->safe_psql('csdb', "SELECT page('add_members', 'sb', ARRAY['x1', 'x2', 'x3'], '31', 'Standby')");
# a full sync whose swap is queued (the primary's apply worker watches "postgres")
$primary->safe_psql('csdb', "SELECT page('members', 'sbfull', ARRAY['f1', 'f2'], '33', 'Standby full')");
$primary->wait_for_catchup($standby);
# three changes: CleverTap gets two records for each, the others one
my %per_change = (clevertap => 2, mparticle => 1, braze => 1);
for my $kind (@KINDS)
{
	is($standby->safe_psql('csdb', "SELECT count(*) FROM cohortsync.outbox WHERE destination = '$dest->{$kind}'"),
		3 * $per_change{$kind}, "$kind: the standby has the queued records");
}
sleep 3;
is($standby->safe_psql('postgres',
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'cohortsync delivery'"), '0',
	'no delivery worker runs on the standby');
is(standin_get($standin->{$_}, '/_stats')->{requests}, 0, "$_: the standby sent nothing") for @KINDS;
is($standby->safe_psql('postgres',
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'cohortsync apply'"), '0',
	'no apply worker runs on the standby');
is($standby->safe_psql('csdb', "SELECT state FROM cohortsync.sync_sessions WHERE session_id = 'sbfull'"),
	'applying', 'the standby has the full sync queued, not applied');

my @waiting = slurp_file($primary->logfile) =~
  /extension "cohortsync" is not installed in database "postgres"; waiting/g;
is(scalar(@waiting), 1, 'where the extension is not installed, the worker waits quietly (one log line)');

$standby->promote;
ok(wait_until(30, sub {
	$standby->safe_psql('csdb', "SELECT state FROM cohortsync.sync_sessions WHERE session_id = 'sbfull'")
	  eq 'completed' }),
	'once promoted, it applies the queued full sync');
ok(wait_until(30, sub {
	$standby->safe_psql('csdb', 'SELECT count(*) FROM cohortsync.outbox') eq '0' }),
	'once promoted, it delivers');
is(scalar(@{ delivered_records($ct) }), 10, 'all ten records (two for each of the five changes)');
for my $kind (@KINDS)
{
	is_deeply(standin_tally($standin->{$kind}),
		{ map { $_ => 1 } (map { change_keys($kind, $_, 1, 'Standby') } qw(x1 x2 x3)),
			(map { change_keys($kind, $_, 1, 'Standby full') } qw(f1 f2)) },
		"$kind: once promoted, it delivers each of the five changes once, to the same destination");
}

$standby->stop;
$primary->stop;

#------------------------------------------------------------------------------
# Switchover in the middle of a backlog. The primary delivers part of 2000
# changes to each destination; then, at a quiet point (each stand-in answers
# 503 for a moment, so every record is either acknowledged with its outcome
# recorded, or waits), its caught-up standby is promoted. Before the promotion
# nothing is sent; after it, exactly what the primary had not had acknowledged:
# every record arrives once in all, none twice.
#------------------------------------------------------------------------------
my $ct2 = start_standin();
my $p2 = new_delivery_node('primary2', $ct2, init => { allows_streaming => 1 },
	conf => [ 'cohortsync.batch_size = 100', 'cohortsync.max_inflight = 2' ]);
my ($standin2, $dest2) = connect_every_kind($p2, $ct2);
$p2->backup('b2');
my $s2 = PostgreSQL::Test::Cluster->new('standby2');
$s2->init_from_backup($p2, 'b2', has_streaming => 1);
$s2->start;

$p2->safe_psql('postgres', "SELECT cohortsync.pause_destination('$dest2->{$_}')") for @KINDS;
$p2->safe_psql('postgres',
	"SELECT page('add_members', 'so', (SELECT array_agg('so' || g) FROM generate_series(1, 2000) g), '32', 'Switchover')");
# the other kinds take 100 and 75 records a request, CleverTap 100 of its 4000:
# slower answers keep them from finishing before their quiet point
my %delay = (clevertap => 50, mparticle => 200, braze => 200);
standin_post($standin2->{$_}, '/_control', { delay_ms => $delay{$_} }) for @KINDS;
$p2->safe_psql('postgres', "SELECT cohortsync.resume_destination('$dest2->{$_}')") for @KINDS;
# each stand-in starts answering 503 once it has a quarter of its records
my %total = map { $_ => 2000 * $per_change{$_} } @KINDS;
my %stopped;
ok(wait_until(30, sub {
	for my $kind (grep { !$stopped{$_} } @KINDS)
	{
		next if standin_get($standin2->{$kind}, '/_stats')->{records_accepted} < $total{$kind} / 4;
		standin_post($standin2->{$kind}, '/_control', { status_all => 503 });
		$stopped{$kind} = 1;
	}
	return scalar(keys %stopped) == scalar(@KINDS);
}), 'switchover: the primary is delivering the backlog to every destination');
my %acked;
for my $kind (@KINDS)
{
	my $s = $standin2->{$kind};
	# quiet: whatever the destination accepted has its outcome recorded on the primary
	ok(wait_until(30, sub {
		standin_get($s, '/_stats')->{in_flight} == 0
		  && $p2->safe_psql('postgres', "SELECT delivered FROM cohortsync.destination_status WHERE name = '$dest2->{$kind}'")
		  == standin_get($s, '/_stats')->{records_accepted} }),
		"switchover: $kind: a quiet point, every acknowledged record recorded as delivered");
	$acked{$kind} = standin_get($s, '/_stats')->{records_accepted};
	cmp_ok($acked{$kind}, '<', $total{$kind},
		"switchover: $kind: the primary had not delivered everything ($acked{$kind} of $total{$kind})");
}
$p2->wait_for_catchup($s2);
$p2->stop;

my %requests = map { $_ => standin_get($standin2->{$_}, '/_stats')->{requests} } @KINDS;
sleep 2;
for my $kind (@KINDS)
{
	is(standin_get($standin2->{$kind}, '/_stats')->{requests}, $requests{$kind},
		"switchover: $kind: the standby sends nothing before promotion");
	is($s2->safe_psql('postgres', "SELECT count(*) FROM cohortsync.outbox WHERE destination = '$dest2->{$kind}'"),
		$total{$kind} - $acked{$kind}, "switchover: $kind: the standby holds exactly the records not acknowledged");
}

standin_post($standin2->{$_}, '/_control', { status_all => undef, delay_ms => 0 }) for @KINDS;
$s2->promote;
ok(wait_until(30, sub { $s2->safe_psql('postgres', 'SELECT count(*) FROM cohortsync.outbox') eq '0' }),
	'switchover: once promoted, it delivers the rest');
for my $kind (@KINDS)
{
	my $tally = standin_tally($standin2->{$kind});
	my @wrong = grep { ($tally->{$_} // 0) != 1 } map { change_keys($kind, "so$_", 1, 'Switchover') } 1 .. 2000;
	is(scalar(@wrong), 0, "switchover: $kind: every record arrived exactly once across the switchover")
	  or diag "wrong: @wrong[0 .. ($#wrong < 9 ? $#wrong : 9)]";
	is(scalar(keys %$tally), $total{$kind}, "switchover: $kind: nothing else arrived");
}
$s2->stop;
done_testing();
