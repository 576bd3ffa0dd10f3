# Delivery survives: kill -9 of the worker mid-batch (to every kind of
# destination), an immediate restart of the server, DROP EXTENSION while
# requests are in flight, DROP DATABASE of cohortsync.database. Nothing is
# lost; duplicates stay bounded.
use strict;
use warnings;

use IPC::Run;
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
# kill -9 of the worker while a batch to each kind of destination hangs in
# flight: CleverTap's "ct" and one destination of every other kind, each at its
# own stand-in. Members k1 to k50 are removed again at once: the removal of
# those whose addition is in flight waits behind it, and every removal must
# still arrive after its addition once the worker is back.
#------------------------------------------------------------------------------
my ($standin, $dest) = connect_every_kind($node, $ct);
# the batch in flight at the kill: cohortsync.batch_size (1000), within each kind's limit
my %batch = (clevertap => 1000, mparticle => 100, braze => 75);

# Whether each member is in cohort "Crash" as the destination last heard it:
# CleverTap's last profile record of the member, mParticle's last batch of the
# member, Braze's user as /_users shows it after applying every object.
sub final_state
{
	my ($kind, $s) = @_;
	my %in;
	if ($kind eq 'braze')
	{
		my $users = standin_get($s, '/_users')->{users};
		for my $id (keys %$users)
		{
			$in{$id} = (grep { $_ eq 'Crash' } @{ $users->{$id}{'Mixpanel Cohorts'} // [] }) ? 1 : 0;
		}
		return \%in;
	}
	for my $r (@{ delivered_records($s) })
	{
		if ($kind eq 'clevertap')
		{
			next unless $r->{type} eq 'profile';
			(my $id = $r->{identity}) =~ s/^ct-//;
			$in{$id} = exists $r->{profileData}{'Mixpanel Cohorts'}{'$add'} ? 1 : 0;
		}
		else
		{
			$in{ $r->{user_identities}{customer_id} } = $r->{user_attributes}{Crash} ? 1 : 0;
		}
	}
	return \%in;
}

# every change arrived at least once, nothing else did, duplicates stay within
# the batch in flight at the kill, and each member's final state is right
sub check_kill
{
	my ($kind, $ids, $removed) = @_;
	my %out = map { $_ => 1 } @$removed;
	my %expected = map { $_ => 1 }
	  (map { change_keys($kind, $_, 1, 'Crash') } @$ids), (map { change_keys($kind, $_, 0, 'Crash') } @$removed);
	my $tally = standin_tally($standin->{$kind});
	my @missing = grep { !$tally->{$_} } sort keys %expected;
	is_deeply(\@missing, [], "kill: $kind: every change is delivered");
	my @other = grep { !$expected{$_} } sort keys %$tally;
	is_deeply(\@other, [], "kill: $kind: nothing else arrives");
	my $dups = 0;
	$dups += $_ - 1 for values %$tally;
	note "kill: $kind: $dups duplicate records";
	cmp_ok($dups, '<=', $batch{$kind}, "kill: $kind: duplicates bounded ($dups)");
	is_deeply(final_state($kind, $standin->{$kind}), { map { $_ => $out{$_} ? 0 : 1 } @$ids },
		"kill: $kind: each member's final state is right (the removals last)");
}

ok(wait_until(10, sub { worker_pid($node) ne '' }), 'kill: the worker shows in pg_stat_activity');
is(sql("SELECT application_name FROM pg_stat_activity WHERE backend_type = 'cohortsync delivery'"),
	'cohortsync delivery', 'kill: with its application_name');

standin_post($standin->{$_}, '/_control', { hang => JSON::PP::true }) for @KINDS;
my @k = map { "k$_" } 1 .. 1500;
my @k_removed = map { "k$_" } 1 .. 50;
sql("SELECT page('add_members', 'k', (SELECT array_agg('k' || g) FROM generate_series(1, 1500) g), '21', 'Crash')");
sql("SELECT page('remove_members', 'k', (SELECT array_agg('k' || g) FROM generate_series(1, 50) g), '21', 'Crash')");
for my $kind (@KINDS)
{
	ok(wait_until(20, sub { standin_get($standin->{$kind}, '/_stats')->{in_flight} >= 1 }),
		"kill: $kind: requests hang in flight");
	ok(wait_until(10, sub {
		sql("SELECT in_flight FROM cohortsync.destination_status WHERE name = '$dest->{$kind}'") > 0 }),
		"kill: $kind: the status view shows them in flight");
}
my $pid = worker_pid($node);
kill 'KILL', $pid;
ok(wait_until(30, sub { my $p = worker_pid($node); $p ne '' && $p ne $pid }),
	'kill: the postmaster restarts, and a new worker runs');
standin_post($standin->{$_}, '/_control', { hang => JSON::PP::false }) for @KINDS;
ok(outbox_empty($node, 60), 'kill: the outbox drains');
check_kill($_, \@k, \@k_removed) for @KINDS;
# (leases live in the worker's memory: the new worker simply sends again what the
# dead one had in flight, which check_kill bounds)

# CleverTap alone from here on
sql("SELECT cohortsync.disconnect_destination('$dest->{$_}')") for grep { $_ ne 'clevertap' } @KINDS;

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
$pid = worker_pid($node);
my $t0 = time();
sql("DROP EXTENSION cohortsync");
cmp_ok(time() - $t0, '<', 3, 'drop extension: does not wait for the worker');
standin_post($ct, '/_control', { hang => JSON::PP::false });
sleep 2;
is(worker_pid($node), $pid, 'drop extension: the worker carries on');
sql("CREATE EXTENSION cohortsync");
sql("SELECT cohortsync.connect_clevertap('ct', 'ACC', '$PASSCODE', 'eu1', '$ct->{url}')");
standin_post($ct, '/_reset');
sql("SELECT page('add_members', 'd2', ARRAY['d3'], '24', 'Again')");
ok(outbox_empty($node, 30), 'drop extension: after CREATE EXTENSION the worker delivers again');
is(scalar(@{ delivered_records($ct) }), 2, 'drop extension: the new change arrives');
is(worker_pid($node), $pid, 'drop extension: same worker throughout');
$node->stop;

#------------------------------------------------------------------------------
# DROP DATABASE of cohortsync.database while both workers are busy: delivery
# with a request in flight, the HTTP listener serving a stream of pages (after
# a reload moved it to another port). Neither blocks the drop. Then, while the
# database is missing, they wait quietly: one LOG line each, no FATAL every
# five seconds. CREATE DATABASE brings them back.
#------------------------------------------------------------------------------
my ($port_a, $port_b) = (PostgreSQL::Test::Cluster::get_free_port(), PostgreSQL::Test::Cluster::get_free_port());
my $node2 = new_delivery_node('dropdb', $ct, dbname => 'csdb',
	conf => [ "cohortsync.http_listen = '127.0.0.1:$port_a'", "cohortsync.http_require_auth = off" ]);
# csdb exists only once the server runs: point the workers at it and restart
$node2->append_conf('postgresql.conf', "cohortsync.database = 'csdb'\n");
$node2->restart;
sub sql2 { return $node2->safe_psql('postgres', $_[0]); }
sub healthz
{
	my ($port) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '5',
		"http://127.0.0.1:$port/healthz" ], '>', \$out, '2>', \$err);
	return $out;
}
# the listener's database workers: cohortsync.http_workers, 4 by default
my $listeners = 4;
ok(wait_until(10, sub {
	sql2("SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('cohortsync delivery', 'cohortsync http listener', 'cohortsync apply') AND datname = 'csdb'") eq 2 + $listeners }),
	'drop database: every worker is connected to csdb');

standin_post($ct, '/_reset');
standin_post($ct, '/_control', { hang => JSON::PP::true });
$node2->safe_psql('csdb', "SELECT page('add_members', 'dd', ARRAY['dd1'], '25', 'Drop db')");
ok(wait_until(20, sub { standin_get($ct, '/_stats')->{in_flight} >= 1 }), 'drop database: a delivery request hangs in flight');

# the listener's settings change while delivery is busy: it moves, the worker stays
my $delivery_pid = worker_pid($node2);
sql2("ALTER SYSTEM SET cohortsync.http_listen = '127.0.0.1:$port_b'");
sql2("SELECT pg_reload_conf()");
ok(wait_until(10, sub { healthz($port_b) eq '200' }), 'reload: the listener moved to its new port');
is(healthz($port_a), '000', 'reload: and left the old one');
is(worker_pid($node2), $delivery_pid, 'reload: the delivery worker carried on');

my $page = q({"action":"add_members","parameters":{"mixpanel_project_id":"1001","mixpanel_cohort_id":"26","mixpanel_session_id":"s","members":[{"mixpanel_distinct_id":"http1"}]}});
my $clients = IPC::Run::start(
	[ 'sh', '-c', "while :; do curl -s -o /dev/null --max-time 5 -H 'Content-Type: application/json' "
		  . "--data '$page' http://127.0.0.1:$port_b/mixpanel; done" ]);
ok(wait_until(10, sub { slurp_file($node2->logfile) =~ /"POST \/mixpanel" 200/ }),
	'drop database: the listener is serving pages');

my $log_offset = -s $node2->logfile;
$t0 = time();
my ($ret, $out, $err) = $node2->psql('postgres', 'DROP DATABASE csdb');
my $took = time() - $t0;
is($ret, 0, 'drop database: succeeds while both workers are busy') or diag $err;
cmp_ok($took, '<', 4, 'drop database: without waiting for the workers');
$clients->kill_kill;
standin_post($ct, '/_control', { hang => JSON::PP::false });
my $log = slurp_file($node2->logfile, $log_offset);
like($log, qr/cohortsync delivery: leaving database "csdb" for DROP DATABASE/,
	'drop database: the delivery worker says it leaves');
for my $i (1 .. $listeners)
{
	like($log, qr/cohortsync http listener $i: leaving database "csdb" for DROP DATABASE/,
		"drop database: so does listener worker $i");
}
like($log, qr/cohortsync apply: leaving database "csdb" for DROP DATABASE/,
	'drop database: and the apply worker');

# two restart intervals (bgw_restart_time is 5 s): a FATAL each time, before
sleep 12;
$log = slurp_file($node2->logfile, $log_offset);
my @fatal = $log =~ /^.*FATAL.*$/mg;
is_deeply(\@fatal, [], 'missing database: no FATAL in the log');
my @waiting = $log =~ /^.*database "csdb" does not exist or does not allow connections; waiting for it$/mg;
is(scalar(@waiting), 2 + $listeners, 'missing database: one LOG line per worker') or diag explain \@waiting;
is(sql2("SELECT string_agg(backend_type || ' ' || coalesce(datname, '-'), ', ' ORDER BY backend_type)
           FROM pg_stat_activity WHERE backend_type LIKE 'cohortsync%'"),
	join(', ', 'cohortsync apply -', 'cohortsync delivery -', 'cohortsync http acceptor -', ('cohortsync http listener -') x $listeners),
	'missing database: the workers wait, attached to no database (the listener\'s acceptor never is)');
ok($node2->safe_psql('postgres', 'SELECT 1') eq '1', 'drop database: the server is fine');

# the database comes back: the workers connect again and work
sql2('CREATE DATABASE csdb');
$node2->safe_psql('csdb', 'CREATE EXTENSION cohortsync');
$node2->safe_psql('csdb', page_sql());
$node2->safe_psql('csdb', "SELECT cohortsync.connect_clevertap('ct', 'ACC', '$PASSCODE', 'eu1', '$ct->{url}')");
ok(wait_until(30, sub {
	sql2("SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('cohortsync delivery', 'cohortsync http listener', 'cohortsync apply') AND datname = 'csdb'") eq 2 + $listeners }),
	'database back: the workers connect to it again');
like(slurp_file($node2->logfile, $log_offset), qr/cohortsync delivery: database "csdb" is there now; connecting to it/,
	'database back: and say so');
standin_post($ct, '/_reset');
$node2->safe_psql('csdb', "SELECT page('add_members', 'back', ARRAY['back1'], '27', 'Back')");
ok(outbox_empty($node2, 30, 'csdb'), 'database back: delivery works');
ok(wait_until(15, sub { healthz($port_b) eq '200' }), 'database back: the listener answers');
$node2->stop;

done_testing();
