# A streaming standby sends nothing and applies no queued full sync; once
# promoted, it applies and delivers. Promoted in the
# middle of a backlog the primary was sending, it resumes where the primary left
# it, without sending again what CleverTap had acknowledged.
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
$primary->backup('b1');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b1', has_streaming => 1);
$standby->append_conf('postgresql.conf', "cohortsync.database = 'csdb'\n");
$standby->start;

$primary->safe_psql('csdb', "SELECT page('add_members', 'sb', ARRAY['x1', 'x2', 'x3'], '31', 'Standby')");
# a full sync whose swap is queued (the primary's apply worker watches "postgres")
$primary->safe_psql('csdb', "SELECT page('members', 'sbfull', ARRAY['f1', 'f2'], '33', 'Standby full')");
$primary->wait_for_catchup($standby);
is($standby->safe_psql('csdb', 'SELECT count(*) FROM cohortsync.outbox'), '6',
	'the standby has the queued records');
sleep 3;
is($standby->safe_psql('postgres',
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'cohortsync delivery'"), '0',
	'no delivery worker runs on the standby');
is(standin_get($ct, '/_stats')->{requests}, 0, 'the standby sent nothing');
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

$standby->stop;
$primary->stop;

#------------------------------------------------------------------------------
# Switchover in the middle of a backlog. The primary delivers part of 2000
# changes; then, at a quiet point (CleverTap answers 503 for a moment, so every
# record is either acknowledged with its outcome recorded, or waits), its
# caught-up standby is promoted. Before the promotion nothing is sent; after
# it, exactly what the primary had not had acknowledged: every record arrives
# once in all, none twice.
#------------------------------------------------------------------------------
my $ct2 = start_standin();
my $p2 = new_delivery_node('primary2', $ct2, init => { allows_streaming => 1 },
	conf => [ 'cohortsync.batch_size = 100', 'cohortsync.max_inflight = 2' ]);
$p2->backup('b2');
my $s2 = PostgreSQL::Test::Cluster->new('standby2');
$s2->init_from_backup($p2, 'b2', has_streaming => 1);
$s2->start;

$p2->safe_psql('postgres', "SELECT cohortsync.pause_destination('ct')");
$p2->safe_psql('postgres',
	"SELECT page('add_members', 'so', (SELECT array_agg('so' || g) FROM generate_series(1, 2000) g), '32', 'Switchover')");
standin_post($ct2, '/_control', { delay_ms => 50 });
$p2->safe_psql('postgres', "SELECT cohortsync.resume_destination('ct')");
ok(wait_until(30, sub { standin_get($ct2, '/_stats')->{records_accepted} >= 1000 }),
	'switchover: the primary is delivering the backlog');
standin_post($ct2, '/_control', { status_all => 503 });
# quiet: whatever CleverTap accepted has its outcome recorded on the primary
ok(wait_until(30, sub {
	standin_get($ct2, '/_stats')->{in_flight} == 0
	  && $p2->safe_psql('postgres', 'SELECT delivered FROM cohortsync.destination_status')
	  == standin_get($ct2, '/_stats')->{records_accepted} }),
	'switchover: a quiet point, every acknowledged record recorded as delivered');
my $acked = standin_get($ct2, '/_stats')->{records_accepted};
cmp_ok($acked, '<', 4000, "switchover: the primary had not delivered everything ($acked of 4000)");
$p2->wait_for_catchup($s2);
$p2->stop;

my $requests = standin_get($ct2, '/_stats')->{requests};
sleep 2;
is(standin_get($ct2, '/_stats')->{requests}, $requests, 'switchover: the standby sends nothing before promotion');
is($s2->safe_psql('postgres', 'SELECT count(*) FROM cohortsync.outbox'), 4000 - $acked,
	'switchover: the standby holds exactly the records not acknowledged');

standin_post($ct2, '/_control', { status_all => undef, delay_ms => 0 });
$s2->promote;
ok(wait_until(30, sub { $s2->safe_psql('postgres', 'SELECT count(*) FROM cohortsync.outbox') eq '0' }),
	'switchover: once promoted, it delivers the rest');
my $tally = standin_tally($ct2);
my @wrong = grep { ($tally->{$_} // 0) != 1 }
  map { ("ct-so$_ event Added", "ct-so$_ profile \$add") } 1 .. 2000;
is(scalar(@wrong), 0, 'switchover: every record arrived exactly once across the switchover')
  or diag "wrong: @wrong[0 .. ($#wrong < 9 ? $#wrong : 9)]";
is(scalar(keys %$tally), 4000, 'switchover: nothing else arrived');
$s2->stop;
done_testing();
