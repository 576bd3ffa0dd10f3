# Delivery survives: kill -9 of the worker mid-batch, an immediate restart of
# the server, DROP EXTENSION while requests are in flight, DROP DATABASE of
# cohortsync.database. Nothing is lost; duplicates stay bounded.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use CsDelivery;

my $ct = start_standin();
# the TAP framework turns restart_after_crash off; a crash must restart here
my $node = new_delivery_node('crash', $ct, conf => ['restart_after_crash = on']);

sub sql { return $node->safe_psql('postgres', $_[0]); }

# the worker's pid, or '' (also while the server restarts)
sub worker_pid
{
	my ($ret, $out) = (1, '');
	eval {
		($ret, $out) = $node->psql('postgres',
			"SELECT pid FROM pg_stat_activity WHERE backend_type = 'cohortsync delivery'");
	};
	return !$@ && $ret == 0 ? $out : '';
}

# every record of the given members' additions arrived at least once
sub check_delivery
{
	my ($label, $ids, $max_dups) = @_;
	my $recs = delivered_records($ct);
	my %count;
	$count{"$_->{identity} $_->{type}"}++ for @$recs;
	my @missing = grep { !$count{$_} } map { ("ct-$_ event", "ct-$_ profile") } @$ids;
	is_deeply(\@missing, [], "$label: every change is delivered");
	my $dups = 0;
	$dups += $_ - 1 for values %count;
	note "$label: $dups duplicate records";
	cmp_ok($dups, '<=', $max_dups, "$label: duplicates bounded ($dups)");
}

#------------------------------------------------------------------------------
# kill -9 of the worker while a batch hangs in flight
#------------------------------------------------------------------------------
ok(wait_until(10, sub { worker_pid() ne '' }), 'kill: the worker shows in pg_stat_activity');
is(sql("SELECT application_name FROM pg_stat_activity WHERE backend_type = 'cohortsync delivery'"),
	'cohortsync delivery', 'kill: with its application_name');

standin_post($ct, '/_control', { hang => JSON::PP::true });
my @k = map { "k$_" } 1 .. 1500;
sql("SELECT page('add_members', 'k', (SELECT array_agg('k' || g) FROM generate_series(1, 1500) g), '21', 'Crash')");
ok(wait_until(20, sub { standin_get($ct, '/_stats')->{in_flight} >= 1 }), 'kill: requests hang in flight');
ok(wait_until(10, sub { sql("SELECT in_flight FROM cohortsync.destination_status") > 0 }),
	'kill: the status view shows them in flight');
my $pid = worker_pid();
kill 'KILL', $pid;
ok(wait_until(30, sub { my $p = worker_pid(); $p ne '' && $p ne $pid }),
	'kill: the postmaster restarts, and a new worker runs');
standin_post($ct, '/_control', { hang => JSON::PP::false });
ok(outbox_empty($node, 60), 'kill: the outbox drains');
check_delivery('kill', \@k, 1000);
# (leases live in the worker's memory: the new worker simply sends again what the
# dead one had in flight, which check_delivery bounds)

#------------------------------------------------------------------------------
# immediate stop and start while requests are in flight
#------------------------------------------------------------------------------
standin_post($ct, '/_reset');
standin_post($ct, '/_control', { delay_ms => 300 });
my @s = map { "s$_" } 1 .. 1500;
sql("SELECT page('add_members', 's', (SELECT array_agg('s' || g) FROM generate_series(1, 1500) g), '22', 'Stop')");
ok(wait_until(20, sub { standin_get($ct, '/_stats')->{in_flight} >= 1 }), 'restart: requests in flight');
$node->stop('immediate');
$node->start;
ok(outbox_empty($node, 60), 'restart: the outbox drains after the restart');
# at most max_inflight (4) batches can have been stored without their outcome
check_delivery('restart', \@s, 4 * 1000);
standin_post($ct, '/_control', { delay_ms => 0 });

#------------------------------------------------------------------------------
# DROP EXTENSION while a request is in flight does not block and does not
# hurt the worker; CREATE EXTENSION again and delivery resumes.
#------------------------------------------------------------------------------
standin_post($ct, '/_reset');
standin_post($ct, '/_control', { hang => JSON::PP::true });
sql("SELECT page('add_members', 'd', ARRAY['d1', 'd2'], '23', 'Drop')");
ok(wait_until(20, sub { standin_get($ct, '/_stats')->{in_flight} >= 1 }), 'drop extension: a request hangs');
$pid = worker_pid();
my $t0 = time();
sql("DROP EXTENSION cohortsync");
cmp_ok(time() - $t0, '<', 3, 'drop extension: does not wait for the worker');
standin_post($ct, '/_control', { hang => JSON::PP::false });
sleep 2;
is(worker_pid(), $pid, 'drop extension: the worker carries on');
sql("CREATE EXTENSION cohortsync");
sql("SELECT cohortsync.connect_clevertap('ct', 'ACC', 'PASS', 'eu1', '$ct->{url}')");
standin_post($ct, '/_reset');
sql("SELECT page('add_members', 'd2', ARRAY['d3'], '24', 'Again')");
ok(outbox_empty($node, 30), 'drop extension: after CREATE EXTENSION the worker delivers again');
is(scalar(@{ delivered_records($ct) }), 2, 'drop extension: the new change arrives');
is(worker_pid(), $pid, 'drop extension: same worker throughout');
$node->stop;

#------------------------------------------------------------------------------
# DROP DATABASE of cohortsync.database is not blocked by the worker.
#------------------------------------------------------------------------------
my $node2 = new_delivery_node('dropdb', $ct, dbname => 'csdb', conf => ["cohortsync.database = 'csdb'"]);
ok(wait_until(10, sub {
	$node2->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'cohortsync delivery' AND datname = 'csdb'") eq '1' }),
	'drop database: the worker is connected to csdb');
$t0 = time();
my ($ret, $out, $err) = $node2->psql('postgres', 'DROP DATABASE csdb');
is($ret, 0, 'drop database: succeeds') or diag $err;
cmp_ok(time() - $t0, '<', 4, 'drop database: without waiting for the worker');
ok($node2->safe_psql('postgres', 'SELECT 1') eq '1', 'drop database: the server is fine');
$node2->stop;

done_testing();
