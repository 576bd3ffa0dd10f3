# The listener serves requests concurrently (issue #11): a request waiting for one
# cohort's row lock holds up neither /healthz nor another cohort's page; every one of
# cohortsync.http_workers workers serves; pages of the locked cohort wait for the lock
# and are then applied; a reload reaches every worker; DROP DATABASE succeeds with
# every worker connected, and the listener comes back with the database.
use strict;
use warnings;

use IO::Socket::INET;
use IPC::Run;
use JSON::PP;
use MIME::Base64;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $workers = 4;
my $tmp = PostgreSQL::Test::Utils::tempdir;
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $base = "http://127.0.0.1:$port";
my $db = 'csdb';

my $node = PostgreSQL::Test::Cluster->new('workers');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'cohortsync'
cohortsync.database = '$db'
cohortsync.http_listen = '127.0.0.1:$port'
cohortsync.http_workers = $workers
max_worker_processes = 16
});
$node->start;

my $json = JSON::PP->new->canonical;
my $auth = 'mixpanel:cs-secret-many-hands';
my $nbody = 0;

sub curl_cmd
{
	my (%a) = @_;
	my @cmd = ('curl', '-s', '--max-time', $a{max_time} // '60', '-w', '\n%{http_code}');
	if (defined $a{body})
	{
		my $file = "$tmp/body" . $nbody++;
		open my $fh, '>:raw', $file or die $!;
		print $fh $a{body};
		close $fh;
		push @cmd, '-u', $auth, '-H', 'Content-Type: application/json', '--data-binary', "\@$file";
	}
	push @cmd, ($a{url} // $base) . ($a{path} // '/mixpanel');
	return \@cmd;
}

sub status_of
{
	my ($out) = @_;
	return $out =~ /\n(\d{3})\z/ ? $1 : '000';
}

# (status, seconds) of one request
sub http
{
	my (%a) = @_;
	my ($out, $err) = ('', '');
	my $t0 = time;
	IPC::Run::run(curl_cmd(%a), '>', \$out, '2>', \$err);
	return (status_of($out), time - $t0);
}

# a request left running in the background: [harness, \output]
sub start_http
{
	my (%a) = @_;
	my $out = '';
	my $h = IPC::Run::start(curl_cmd(%a), '>', \$out, '2>', \my $err);
	return [ $h, \$out ];
}

sub finish_http
{
	my ($r) = @_;
	$r->[0]->finish;
	return status_of(${ $r->[1] });
}

sub still_running
{
	my ($r) = @_;
	$r->[0]->pump_nb;
	return $r->[0]->pumpable;
}

sub page
{
	my ($cohort, @ids) = @_;
	return $json->encode(
		{
			action => 'add_members',
			parameters => {
				mixpanel_project_id => '1001',
				mixpanel_cohort_id => $cohort,
				mixpanel_cohort_name => "cohort $cohort",
				mixpanel_session_id => 's1',
				members => [ map { { mixpanel_distinct_id => $_ } } @ids ]
			}
		});
}

sub poll_http
{
	my ($want, %a) = @_;
	my $code;
	for (1 .. 150)
	{
		($code) = http(%a, max_time => 5);
		return 1 if $code eq $want;
		select(undef, undef, undef, 0.2);
	}
	diag "last status $code, wanted $want";
	return 0;
}

sub members_of
{
	my ($cohort) = @_;
	return $node->safe_psql($db,
		"SELECT string_agg(distinct_id, ',' ORDER BY distinct_id) FROM cohortsync.members WHERE cohort_id = '$cohort'");
}

sub lock_cohort
{
	my ($cohort) = @_;
	my $s = $node->background_psql($db);
	$s->query_safe("BEGIN; SELECT 1 FROM cohortsync.cohorts WHERE project_id = '1001' AND cohort_id = '$cohort' FOR UPDATE;");
	return $s;
}

sub setup_database
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION cohortsync');
	$node->safe_psql($db, q{
		BEGIN;
		SET LOCAL log_statement = 'none';
		SELECT cohortsync.add_webhook_user('mixpanel', 'cs-secret-many-hands');
		COMMIT;
	});
}

# The database does not exist yet: the workers wait for it, and nothing listens.
setup_database();
ok(poll_http('200', path => '/healthz'), 'listener up once the database is there');
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = $workers FROM pg_stat_activity WHERE backend_type = 'cohortsync http listener' AND datname = '$db'"),
	"$workers listener workers connected");
is( $node->safe_psql('postgres',
		"SELECT string_agg(application_name, ',' ORDER BY application_name) FROM pg_stat_activity"
		  . " WHERE backend_type = 'cohortsync http listener'"),
	join(',', map { "cohortsync http listener $_" } 1 .. $workers),
	'each worker has a name of its own in pg_stat_activity');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'cohortsync http acceptor' AND datname IS NULL"),
	'1', 'one acceptor, attached to no database');

for my $c (qw(held other w1 w2 w3 w4))
{
	my ($code) = http(body => page($c, "$c-0"));
	is($code, '200', "cohort $c created");
}

# --- a page waiting for one cohort's lock holds up nobody else ------------------------------
my $locker = lock_cohort('held');
my $blocked = start_http(body => page('held', 'held-1'));
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'cohortsync http listener' AND wait_event_type = 'Lock'"),
	'a page of the locked cohort waits for the lock');

my ($code, $secs) = http(path => '/healthz');
is($code, '200', '/healthz answered while a page waits for a lock');
cmp_ok($secs, '<', 5, "/healthz answered in ${\ sprintf('%.3f', $secs)} s");
my ($code2, $secs2) = http(body => page('other', 'other-1'));
is($code2, '200', "another cohort's page answered while a page waits for a lock");
cmp_ok($secs2, '<', 5, "another cohort's page answered in ${\ sprintf('%.3f', $secs2)} s");
is(members_of('other'), 'other-0,other-1', "the other cohort's page was applied");
ok(still_running($blocked), 'the page of the locked cohort was still waiting all that time');
is(members_of('held'), 'held-0', 'and has not been applied yet');

$locker->query_safe('COMMIT');
is(finish_http($blocked), '200', 'the waiting page is answered 200 once the lock is released');
is(members_of('held'), 'held-0,held-1', 'and was applied');
$locker->quit;

# --- a client that sends its page slowly holds up nobody either ----------------------------------
my $body = page('slow', 'slow-1');
my $slow = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp')
  or die "connect: $!";
$slow->autoflush(1);
print $slow "POST /mixpanel HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Basic " . encode_base64($auth, '')
  . "\r\nContent-Type: application/json\r\nContent-Length: " . length($body) . "\r\n\r\n"
  . substr($body, 0, 20);
select(undef, undef, undef, 0.3);
($code, $secs) = http(path => '/healthz');
is($code, '200', '/healthz answered while a client is halfway through its page');
cmp_ok($secs, '<', 5, "/healthz answered in ${\ sprintf('%.3f', $secs)} s");
($code) = http(body => page('other', 'other-2'));
is($code, '200', "another cohort's page answered meanwhile");
print $slow substr($body, 20);
my $answer = join('', <$slow>);	# Connection: close: read to the end
like($answer, qr{^HTTP/1\.1 200}, 'the slow client gets its 200 once its page is in');
close $slow;
is(members_of('slow'), 'slow-1', "the slow client's page was applied");

# --- every worker serves: block them one by one ----------------------------------------------
my (@lockers, @waiting);
for my $k (1 .. $workers)
{
	push @lockers, lock_cohort("w$k");
	push @waiting, start_http(body => page("w$k", "w$k-1"));
	ok($node->poll_query_until('postgres',
		"SELECT count(*) = $k FROM pg_stat_activity WHERE backend_type = 'cohortsync http listener' AND wait_event_type = 'Lock'"),
		"$k worker(s) busy waiting for a lock");
	if ($k < $workers)
	{
		($code) = http(path => '/healthz');
		is($code, '200', "/healthz still answered with $k of $workers workers busy");
	}
}
# all of them are busy now: a health check waits for the first that is free
my $queued = start_http(path => '/healthz');
select(undef, undef, undef, 0.5);
ok(still_running($queued), 'with every worker busy, /healthz waits for one');
$_->query_safe('COMMIT') for @lockers;
$_->quit for @lockers;
is(join(',', map { finish_http($_) } @waiting), join(',', ('200') x $workers),
	'every waiting page answered 200 once the locks are released');
is(finish_http($queued), '200', 'and the queued health check too');
is( $node->safe_psql($db,
		"SELECT count(*) FROM cohortsync.members WHERE cohort_id LIKE 'w_' AND distinct_id LIKE 'w_-1'"),
	$workers, 'every waiting page was applied');

# --- a reload reaches every worker --------------------------------------------------------------
$node->safe_psql('postgres', "ALTER SYSTEM SET lock_timeout = '300ms'");
$node->reload;
select(undef, undef, undef, 1.0);
$locker = $node->background_psql($db);
$locker->query_safe('BEGIN; LOCK TABLE cohortsync.cohorts IN ACCESS EXCLUSIVE MODE;');
my @timed = map { start_http(body => page("t$_", "t$_-1"), max_time => 20) } 1 .. $workers;
is(join(',', map { finish_http($_) } @timed), join(',', ('503') x $workers),
	'lock_timeout set by a reload applies in every worker (503 for each of them at once)');
$locker->query_safe('ROLLBACK');
$locker->quit;
$node->safe_psql('postgres', 'ALTER SYSTEM RESET lock_timeout');

my $port2 = PostgreSQL::Test::Cluster::get_free_port();
$node->safe_psql('postgres', "ALTER SYSTEM SET cohortsync.http_listen = '127.0.0.1:$port2'");
$node->reload;
ok(poll_http('200', url => "http://127.0.0.1:$port2", path => '/healthz'), 'after SIGHUP: the new port serves');
($code) = http(path => '/healthz', max_time => 5);
is($code, '000', 'after SIGHUP: the old port is closed');
$base = "http://127.0.0.1:$port2";
my @pages = map { start_http(body => page("p$_", "p$_-1")) } 1 .. $workers * 2;
is(join(',', map { finish_http($_) } @pages), join(',', ('200') x ($workers * 2)),
	'after SIGHUP: concurrent pages all answered 200 on the new port');

# --- the acceptor restarts while a worker holds a request ------------------------------------------
my $acceptor = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'cohortsync http acceptor'");
$locker = lock_cohort('held');
my $orphan = start_http(body => page('held', 'held-2'));
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'cohortsync http listener' AND wait_event_type = 'Lock'"),
	'a page waits for its lock');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($acceptor)");
isnt(finish_http($orphan), '200', 'its client gets no 200 from an acceptor that stopped');
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'cohortsync http acceptor' AND pid <> $acceptor"),
	'the acceptor is started again');
ok(poll_http('200', path => '/healthz'), 'and serves while the worker still waits for the lock');
$locker->query_safe('COMMIT');
$locker->quit;
ok($node->poll_query_until($db,
	"SELECT count(*) = 1 FROM cohortsync.members WHERE cohort_id = 'held' AND distinct_id = 'held-2'"),
	'the worker finished the page (Mixpanel sends it again; it is idempotent)');
@pages = map { start_http(body => page("r$_", "r$_-1")) } 1 .. $workers * 2;
is(join(',', map { finish_http($_) } @pages), join(',', ('200') x ($workers * 2)),
	'every worker serves the new acceptor, the one that held the old request too');

# --- http_listen emptied, then set again ----------------------------------------------------------
$node->safe_psql('postgres', "ALTER SYSTEM SET cohortsync.http_listen = ''");
$node->reload;
ok(poll_http('000', path => '/healthz'), 'http_listen emptied: nothing listens');
$node->safe_psql('postgres', "ALTER SYSTEM RESET cohortsync.http_listen");
$node->safe_psql('postgres', "ALTER SYSTEM SET cohortsync.http_listen = '127.0.0.1:$port2'");
$node->reload;
ok(poll_http('200', path => '/healthz'), 'http_listen set again: served again');

# --- DROP DATABASE with every worker connected ----------------------------------------------------
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'cohortsync http listener' AND datname = '$db'"),
	$workers, 'every worker is connected before DROP DATABASE');
my ($ret, $stdout, $stderr) = $node->psql('postgres', "DROP DATABASE $db");
is($ret, 0, 'DROP DATABASE succeeds with every listener worker connected') or diag $stderr;
ok(poll_http('000', path => '/healthz'), 'without the database nothing listens');
setup_database();
ok(poll_http('200', path => '/healthz'), 'the listener serves again once the database is back');
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = $workers FROM pg_stat_activity WHERE backend_type = 'cohortsync http listener' AND datname = '$db'"),
	'every worker connected again');
($code) = http(body => page('after', 'a'));
is($code, '200', 'a page is applied after the database came back');

$node->stop('fast');
like(slurp_file($node->logfile), qr/cohortsync http: listener shutting down/, 'the acceptor stops on SIGTERM');
unlike(slurp_file($node->logfile), qr/terminated by signal|was terminated by/, 'no process crashed');

done_testing();
