# Fuzzing the webhook HTTP listener (issue #6), in two parts:
#
# 1. Bodies: mutations of the seed pages as raw bytes (invalid UTF-8, NUL bytes, bad
#    escapes, lone surrogates, duplicate keys, deep nesting, huge values) POSTed over
#    one keep-alive connection. Every answer must be 200, 400 or 415 (413 only for a
#    body over http_max_body) in Mixpanel's documented shape, and a rejected page must
#    write nothing: each case carries its own project id, and no row may carry the id
#    of a rejected case.
# 2. Malformed HTTP: request lines, bad, duplicate and oversized headers, wrong
#    Content-Length, truncated and chunked bodies, auth header shapes, a slow client
#    (one byte per 100 ms), more idle connections than the listener accepts. Every
#    request must get an answer or a closed connection within the listener's timeout,
#    no 500 or 503, the listener must keep serving, nothing may be written (the
#    tables' fingerprint is unchanged) and the worker must not restart.
#
# Deterministic: FUZZ_SEED and FUZZ_HTTP_CASES change the seed and the number of
# body cases; failing requests are saved under tmp_check/fuzz_failures.
use strict;
use warnings;

use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $seed = $ENV{FUZZ_SEED} // 'cohortsync-ci';
my $cases = $ENV{FUZZ_HTTP_CASES} // 10_000;
my $fuzz = "$ENV{CS_TOP}/test/fuzz/fuzz.py";
my $failures = "${PostgreSQL::Test::Utils::tmp_check}/fuzz_failures";
my $port = PostgreSQL::Test::Cluster::get_free_port();

my $node = PostgreSQL::Test::Cluster->new('fuzz_http');
$node->init;
# Authentication is off for the body part: a SCRAM check per request would make
# 10,000 cases cost minutes. The protocol part turns it on.
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'cohortsync'
cohortsync.http_listen = '127.0.0.1:$port'
cohortsync.http_require_auth = off
cohortsync.http_log_level = 'debug1'
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION cohortsync');
$node->safe_psql('postgres', q{
	BEGIN;
	SET LOCAL log_statement = 'none';
	SELECT cohortsync.add_webhook_user('mixpanel', 'cs-secret-fuzzy-horse');
	COMMIT;
});

sub curl
{
	my (@args) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'curl', '-s', '--max-time', '10', '-o', '/dev/null', '-w', '%{http_code}', @args ],
		'>', \$out, '2>', \$err);
	return $out;
}

sub wait_for
{
	my ($want, @args) = @_;
	for (1 .. 100)
	{
		return 1 if curl(@args) eq $want;
		select(undef, undef, undef, 0.2);
	}
	return 0;
}

sub listener_pid
{
	return $node->safe_psql('postgres',
		"SELECT pid::text FROM pg_stat_activity WHERE backend_type = 'cohortsync http acceptor'"
		  . " UNION ALL SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity"
		  . " WHERE backend_type = 'cohortsync http listener'");
}

sub run_fuzz
{
	my (@args) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'python3', $fuzz, @args, '--port', $port, '--failures', $failures ],
		'>', \$out, '2>', \$err);
	my $r = eval { decode_json($out) };
	return $r if $r;
	diag("fuzz.py @args: $err");
	return { counts => {}, failures => [ { case => 'fuzz.py', error => "no result: $err" } ] };
}

sub report_failures
{
	my ($r) = @_;
	diag("$_->{case}: $_->{error}" . ($_->{saved} ? "\n  saved as $_->{saved}" : ''))
	  for @{ $r->{failures} };
}

ok(wait_for('200', "http://127.0.0.1:$port/healthz"), 'listener up');
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 4 FROM pg_stat_activity WHERE backend_type = 'cohortsync http listener'"),
	'all four listener workers up');
my $pid = listener_pid();

# --- 1. bodies ---------------------------------------------------------------------------
my $r = run_fuzz('http', '--seed', $seed, '--cases', $cases, '--timeout', '60');
my $c = $r->{counts};
diag(sprintf('fuzz http bodies (seed %s): %d requests in %s s, %d accepted (200), '
	  . '%d rejected (400), %d not JSON (415), %d too large (413), %d regression bodies',
	$seed, map { $_ // 0 } @$c{qw(tried seconds accepted rejected not_json too_large regressions)}));
report_failures($r);
is(scalar @{ $r->{failures} }, 0, 'every body was answered 200, 400, 415 or 413, in the documented shape');
cmp_ok($c->{tried} // 0, '>=', $cases, "all $cases bodies were sent");
cmp_ok($c->{accepted} // 0, '>', $cases / 10, 'a fair share of the bodies is accepted');
cmp_ok($c->{rejected} // 0, '>', $cases / 10, 'a fair share of the bodies is rejected');
cmp_ok($c->{not_json} // 0, '>', $cases / 50, 'a fair share of the bodies is not JSON');

# nothing written by rejected pages: no row carries the project id of one
my $ids = sub {
	my ($file) = @_;
	return [ grep { /^fz-\d{7}-\d{2}$/ } split /\n/, slurp_file("$failures/$file") ];
};
my $stored = $node->safe_psql(
	'postgres', q{
	SELECT project_id FROM cohortsync.cohorts UNION SELECT project_id FROM cohortsync.members
	UNION SELECT project_id FROM cohortsync.membership_changes
	UNION SELECT project_id FROM cohortsync.sync_sessions
	UNION SELECT project_id FROM cohortsync.sync_pages
	UNION SELECT project_id FROM cohortsync.staged_members});
my %stored = map { $_ => 1 } split /\n/, $stored;
my @written = grep { $stored{$_} } @{ $ids->('rejected_projects') };
is(scalar @written, 0, 'no rejected page wrote anything')
  or diag('written by rejected pages: ' . join(' ', @written[ 0 .. ($#written < 9 ? $#written : 9) ]));
# (a page whose id was mutated, e.g. a later duplicate key, is stored under another)
my @accepted = @{ $ids->('accepted_projects') };
my @found = grep { $stored{$_} } @accepted;
cmp_ok(scalar @found, '>', 0.9 * @accepted,
	'accepted pages were stored under their ids: the check above can see writes');
is(listener_pid(), $pid, 'the listener (acceptor and workers) did not restart');

# --- 2. malformed HTTP ----------------------------------------------------------------------
$node->safe_psql('postgres', 'ALTER SYSTEM SET cohortsync.http_require_auth = on');
$node->reload;
ok(wait_for('401', '-X', 'POST', '--data', '{}', "http://127.0.0.1:$port/mixpanel"),
	'authentication is on');

my $fingerprint_sql = q{
	SELECT string_agg(t || ':' || n || ':' || coalesce(h, 0), ' ' ORDER BY t) FROM (
	  SELECT 'cohorts' AS t, count(*) AS n, sum(hashtext(x::text)) AS h
	    FROM cohortsync.cohorts x WHERE project_id <> 'proto-ok'
	  UNION ALL SELECT 'members', count(*), sum(hashtext(x::text))
	    FROM cohortsync.members x WHERE project_id <> 'proto-ok'
	  UNION ALL SELECT 'changes', count(*), sum(hashtext(x::text))
	    FROM cohortsync.membership_changes x WHERE project_id <> 'proto-ok'
	  UNION ALL SELECT 'sessions', count(*), sum(hashtext(x::text))
	    FROM cohortsync.sync_sessions x WHERE project_id <> 'proto-ok'
	  UNION ALL SELECT 'pages', count(*), sum(hashtext(x::text))
	    FROM cohortsync.sync_pages x WHERE project_id <> 'proto-ok'
	  UNION ALL SELECT 'staged', count(*), sum(hashtext(x::text))
	    FROM cohortsync.staged_members x WHERE project_id <> 'proto-ok'
	  UNION ALL SELECT 'users', count(*), sum(hashtext(x::text)) FROM cohortsync.webhook_users x) s};
my $before = $node->safe_psql('postgres', $fingerprint_sql);

# 70 s: libmicrohttpd drops some dead connections only at its 60 s idle timeout
$r = run_fuzz('proto', '--seed', $seed, '--cases', '150', '--timeout', '70',
	'--auth', 'mixpanel:cs-secret-fuzzy-horse');
$c = $r->{counts};
diag(sprintf('fuzz http protocol (seed %s): %d requests in %s s: %d answered (%s), %d closed; '
	  . '%d health checks served during the slow client; %d idle connections opened',
	$seed, $c->{tried} // 0, $c->{seconds} // '?', $c->{answered} // 0,
	join(' ', map { "$_: $c->{by_status}{$_}" } sort keys %{ $c->{by_status} // {} }),
	$c->{closed} // 0, $c->{served_during_slow_client} // 0, $c->{idle_connections_opened} // 0));
report_failures($r);
is(scalar @{ $r->{failures} }, 0,
	'every malformed request got an answer (no 500/503) or a closed connection, and the listener kept serving');
cmp_ok($c->{tried} // 0, '>=', 150, 'all malformed requests were sent');

is($node->safe_psql('postgres', $fingerprint_sql), $before, 'malformed requests wrote nothing');
is($node->safe_psql('postgres', "SELECT count(*) FROM cohortsync.cohorts WHERE project_id = 'proto-bad'"),
	'0', 'no page of a malformed request was stored');
is($node->safe_psql('postgres', "SELECT count(*) FROM cohortsync.members WHERE project_id = 'proto-ok'"),
	'1', 'the odd but valid requests (chunked, NUL after the password) were stored');

# still serving a valid page, with the same worker
is( curl(
		'-u', 'mixpanel:cs-secret-fuzzy-horse', '-H', 'Content-Type: application/json', '--data',
		'{"action": "add_members", "parameters": {"mixpanel_project_id": "after", '
		  . '"mixpanel_cohort_id": "c", "mixpanel_session_id": "s", '
		  . '"members": [{"mixpanel_distinct_id": "u"}]}}',
		"http://127.0.0.1:$port/mixpanel"),
	'200', 'a valid page is accepted after all that');
is(listener_pid(), $pid, 'the listener (acceptor and workers) did not restart');
unlike(slurp_file($node->logfile), qr/terminated by signal|server process .* was terminated/,
	'no process crashed');

$node->stop;
done_testing();
