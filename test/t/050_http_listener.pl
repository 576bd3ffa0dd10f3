# The webhook HTTP listener, over real HTTP with curl against a real server:
# every status the issue lists, the seed's A-F scenario page by page, several
# clients at once, 503 on lock and statement timeouts, SIGHUP changing the
# credentials and the settings without a restart, HTTPS with a self-signed
# certificate, and a server log free of passwords and member data.
use strict;
use warnings;

use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $base = "http://127.0.0.1:$port";

my $node = PostgreSQL::Test::Cluster->new('listener');
$node->init(allows_streaming => 1);
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'cohortsync'
cohortsync.http_listen = '127.0.0.1:$port'
lock_timeout = '1s'
});
$node->start;

my $json = JSON::PP->new->canonical;
my $nbody = 0;

# curl arguments for one request; the body goes through a file, as bytes
sub curl_cmd
{
	my (%a) = @_;
	my @cmd = ('curl', '-s', '--max-time', '20', '-w', '\n%{http_code}');
	push @cmd, '-X', $a{method} if $a{method};
	push @cmd, '-u', $a{auth} if defined $a{auth};
	push @cmd, '--cacert', $a{cacert} if $a{cacert};
	push @cmd, '-D', $a{headers} if $a{headers};
	push @cmd, @{ $a{extra} } if $a{extra};
	if (defined $a{body})
	{
		my $file = "$tmp/body" . $nbody++;
		open my $fh, '>:raw', $file or die $!;
		print $fh $a{body};
		close $fh;
		push @cmd, '-H', 'Content-Type: application/json', '--data-binary', "\@$file";
	}
	push @cmd, ($a{url} // $base) . ($a{path} // '/mixpanel');
	return \@cmd;
}

# (status, decoded body or raw text) of curl's output
sub parse_output
{
	my ($out) = @_;
	$out =~ s/\n(\d{3})\z// or return ('000', undef);
	my $code = $1;
	my $body = eval { decode_json($out) } // $out;
	return ($code, $body);
}

sub http
{
	my (%a) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run(curl_cmd(%a), '>', \$out, '2>', \$err);
	return parse_output($out);
}

# POST /mixpanel with the current good credentials
my $auth = 'mixpanel:cs-secret-horse-battery';

sub post
{
	my ($body, %a) = @_;
	return http(auth => $auth, body => $body, %a);
}

sub page
{
	my ($action, $cohort, $session, $ids, %o) = @_;
	return $json->encode(
		{
			action => $action,
			parameters => {
				mixpanel_project_id => '1001',
				mixpanel_cohort_id => $cohort,
				mixpanel_cohort_name => 'Power users',
				mixpanel_session_id => $session,
				page_info => { total_pages => $o{total} // 1, page_count => $o{page} // 1 },
				members => [
					map {
						{
							mixpanel_distinct_id => $_,
							email => lc($_) . '@example.com',
							first_name => $_,
							last_name => 'Doe'
						}
					} @$ids
				]
			}
		});
}

# the documented {action, status, error{message, code}} shape
sub is_failure
{
	my ($code, $body, $want, $name) = @_;
	is($code, $want, "$name: status $want");
	ok( ref $body eq 'HASH'
		  && exists $body->{action}
		  && ($body->{status} // '') eq 'failure'
		  && ref $body->{error} eq 'HASH'
		  && length($body->{error}{message} // '') > 0
		  && ($body->{error}{code} // 0) == $want,
		"$name: failure body in the documented shape")
	  or diag explain $body;
}

sub is_success
{
	my ($code, $body, $action, $name) = @_;
	is($code, '200', "$name: status 200");
	is_deeply($body, { action => $action, status => 'success' }, "$name: success body");
}

# wait until url answers want (the listener restarts asynchronously)
sub poll_http
{
	my ($want, %a) = @_;
	my $code;
	for (1 .. 100)
	{
		($code) = http(%a);
		return 1 if $code eq $want;
		select(undef, undef, undef, 0.2);
	}
	diag "last status $code, wanted $want";
	return 0;
}

sub set_password
{
	my ($user, $password) = @_;
	# as docs/http-listener.md recommends: keep the call out of the statement log
	$node->safe_psql('postgres', qq{
		BEGIN;
		SET LOCAL log_statement = 'none';
		SELECT cohortsync.add_webhook_user('$user', '$password');
		COMMIT;
	});
}

sub count_rows
{
	my ($table) = @_;
	return $node->safe_psql('postgres', "SELECT count(*) FROM cohortsync.$table");
}

# the acceptor: all of HTTP; the database workers do each request's transactions
sub listener_pid
{
	return $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'cohortsync http acceptor'");
}

sub worker_pids
{
	return $node->safe_psql('postgres',
		"SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity WHERE backend_type = 'cohortsync http listener'");
}

sub reload_and_settle
{
	$node->reload;
	# the listener rereads the file as soon as the signal arrives; give it a moment
	select(undef, undef, undef, 1.0);
}

my ($code, $body);

# --- before CREATE EXTENSION: 503, with a hint in the log --------------------
ok(poll_http('503', path => '/healthz'), 'listener up; healthz 503 while the extension is missing');
($code, $body) = post(page('add_members', '1', 'T', ['A']));
is_failure($code, $body, '503', 'extension not installed');
like(slurp_file($node->logfile), qr/HINT:  Run CREATE EXTENSION cohortsync in database "postgres"/,
	'log says how to install the extension');

$node->safe_psql('postgres', 'CREATE EXTENSION cohortsync');

# --- no credentials configured: everything refused, with a hint ---------------
($code, $body) = post(page('add_members', '1', 'T', ['A']));
is_failure($code, $body, '401', 'no webhook users configured');
like(slurp_file($node->logfile),
	qr/no webhook users are configured.*\n.*HINT:  Add the user and password configured in Mixpanel with: SELECT cohortsync.add_webhook_user/,
	'log says how to add webhook users');

set_password('mixpanel', 'cs-secret-horse-battery');
my $pid = listener_pid();
like($pid, qr/^\d+$/, 'the acceptor shows in pg_stat_activity');
is($node->safe_psql('postgres',
		"SELECT application_name FROM pg_stat_activity WHERE pid = $pid"),
	'cohortsync http acceptor', 'the acceptor sets application_name');
is($node->safe_psql('postgres',
		"SELECT string_agg(application_name, ',' ORDER BY application_name) FROM pg_stat_activity"
		  . " WHERE backend_type = 'cohortsync http listener'"),
	join(',', map { "cohortsync http listener $_" } 1 .. 4),
	'four listener workers (the default), each with its own application_name');
my $workers = worker_pids();

# --- authentication ------------------------------------------------------------
($code, $body) = post(page('add_members', '1', 'T', ['A']), auth => 'mixpanel:cs-secret-wrong', headers => "$tmp/h401");
is_failure($code, $body, '401', 'wrong password');
like(slurp_file("$tmp/h401"), qr/^WWW-Authenticate: Basic realm="cohortsync"/mi,
	'401 carries WWW-Authenticate');
($code, $body) = http(body => page('add_members', '1', 'T', ['A']));
is_failure($code, $body, '401', 'no password');
($code, $body) = post(page('add_members', '1', 'T', ['A']), auth => 'stranger:cs-secret-horse-battery');
is_failure($code, $body, '401', 'unknown user');

# --- paths and methods ------------------------------------------------------------
($code, $body) = post(page('add_members', '1', 'T', ['A']), path => '/webhook');
is_failure($code, $body, '404', 'wrong path');
($code, $body) = http(auth => $auth, path => '/mixpanel', headers => "$tmp/h405");
is_failure($code, $body, '405', 'GET /mixpanel');
like(slurp_file("$tmp/h405"), qr/^Allow: POST/mi, '405 carries Allow');
($code, $body) = http(auth => $auth, method => 'DELETE', path => '/healthz');
is_failure($code, $body, '405', 'DELETE /healthz');

# --- bodies the listener refuses before ingest -----------------------------------
my $huge = '{"action": "members", "pad": "' . ('x' x (5 * 1024 * 1024)) . '"}';
($code, $body) = post($huge);
is_failure($code, $body, '413', 'huge body (Content-Length)');
($code, $body) = post($huge, extra => [ '-H', 'Transfer-Encoding: chunked' ]);
is_failure($code, $body, '413', 'huge body (chunked)');
($code, $body) = post('this is not JSON');
is_failure($code, $body, '415', 'non-JSON body');
is($body->{action}, undef, 'non-JSON body: action is null');
($code, $body) = post("{\"action\": \"members\xff\"}");
is_failure($code, $body, '415', 'body that is not UTF-8');

# --- an invalid page: 400 with ingest's message, and nothing written ---------------
($code, $body) = post(page('add_members', '1', 'T', ['A']) =~ s/"members":\[.*\]/"members":7/r);
is_failure($code, $body, '400', 'invalid page');
is($body->{action}, 'add_members', 'invalid page: action echoed');
like($body->{error}{message}, qr/members must be an array/, 'invalid page: says what is wrong');
{
	# the listener calls the ingest code itself: its answer is still, byte for byte, the
	# text of what cohortsync.ingest answers for the same body
	my $bad = page('add_members', '1', 'T', ['A']) =~ s/"members":\[.*\]/"members":7/r;
	my ($out, $err) = ('', '');
	IPC::Run::run(curl_cmd(auth => $auth, body => $bad), '>', \$out, '2>', \$err);
	$out =~ s/\n\d{3}\z//;
	is($out, $node->safe_psql('postgres', "SELECT cohortsync.ingest(\$b\$$bad\$b\$::jsonb)::text"),
		'invalid page: the body is the text of cohortsync.ingest\'s answer');
}
($code, $body) = post(page('subscribe', '1', 'T', ['A']));
is_failure($code, $body, '400', 'unknown action');
is( $node->safe_psql('postgres',
		'SELECT (SELECT count(*) FROM cohortsync.cohorts) + (SELECT count(*) FROM cohortsync.members)'
		  . ' + (SELECT count(*) FROM cohortsync.membership_changes) + (SELECT count(*) FROM cohortsync.sync_sessions)'),
	'0', 'nothing written by refused requests');

# --- the seed's A-F scenario, page by page ------------------------------------------
my @scenario = (
	[ 'add_members', 'T', [qw(A B C D)] ],
	[ 'remove_members', 'T', [] ],
	[ 'add_members', 'T+30', [qw(E F)] ],
	[ 'remove_members', 'T+30', [qw(B D)] ],
	[ 'add_members', 'T+60', [] ],
	[ 'remove_members', 'T+60', [] ],
	# Mixpanel starts over after a mid-sync failure: the same pages again
	[ 'add_members', 'T+30', [qw(E F)] ],
	[ 'remove_members', 'T+30', [qw(B D)] ]);
for my $p (@scenario)
{
	my ($action, $session, $ids) = @$p;
	($code, $body) = post(page($action, '4242', $session, $ids));
	is_success($code, $body, $action, "scenario $action(@$ids) at $session");
}
is($node->safe_psql('postgres',
		"SELECT string_agg(distinct_id, ',' ORDER BY distinct_id) FROM cohortsync.members WHERE cohort_id = '4242'"),
	'A,C,E,F', 'scenario: members are A, C, E, F');
is($node->safe_psql('postgres',
		"SELECT string_agg(change || ' ' || distinct_id || ' ' || session_id, ', ' ORDER BY id) FROM cohortsync.membership_changes"),
	'added A T, added B T, added C T, added D T, added E T+30, added F T+30, removed B T+30, removed D T+30',
	'scenario: every change once, in order');

# --- a full sync over two pages ---------------------------------------------------------
($code, $body) = post(page('members', '4242', 'full', [qw(A C)], total => 2, page => 2));
is_success($code, $body, 'members', 'full sync page 2 of 2');
($code, $body) = post(page('members', '4242', 'full', [qw(E G)], total => 2, page => 1));
is_success($code, $body, 'members', 'full sync page 1 of 2');
# the apply worker swaps it in the background
ok($node->poll_query_until('postgres',
		"SELECT string_agg(distinct_id, ',' ORDER BY distinct_id) FROM cohortsync.members WHERE cohort_id = '4242'",
		'A,C,E,G'), 'full sync replaced the membership');

# --- several clients at once ---------------------------------------------------------------
my @clients;
for my $i (1 .. 8)
{
	my $out = '';
	my @ids = map { "c$i-$_" } 1 .. 200;
	push @clients,
	  [ \$out, IPC::Run::start(curl_cmd(auth => $auth, body => page('add_members', "c$i", 's1', \@ids)),
			'>', \$out, '2>', \my $err) ];
}
my @codes;
for my $c (@clients)
{
	$c->[1]->finish;
	my ($cc, $cb) = parse_output(${ $c->[0] });
	push @codes, $cc;
}
is(join(',', @codes), join(',', ('200') x 8), 'eight concurrent clients: all 200');
is($node->safe_psql('postgres',
		"SELECT string_agg(n::text, ',') FROM (SELECT count(*) AS n FROM cohortsync.members WHERE cohort_id LIKE 'c_' GROUP BY cohort_id) s"),
	join(',', ('200') x 8), 'eight concurrent clients: every member stored');

SKIP:
{
	skip 'no /proc', 1 unless -r "/proc/$pid/status";
	like(slurp_file("/proc/$pid/status"), qr/^Threads:\s+1$/m,
		'the acceptor runs in one thread: libmicrohttpd is polled from the wait loop');
}

# --- health ----------------------------------------------------------------------------------
($code, $body) = http(path => '/healthz');
is_success($code, $body, undef, 'healthz');
($code) = http(path => '/healthz', extra => ['--head']);
is($code, '200', 'HEAD /healthz');

# --- transient trouble is 503, and nothing is written ------------------------------------------
my $locker = $node->background_psql('postgres');
$locker->query_safe('BEGIN; LOCK TABLE cohortsync.cohorts IN ACCESS EXCLUSIVE MODE;');
($code, $body) = post(page('add_members', 'locked', 'L', ['X']));
is_failure($code, $body, '503', 'lock timeout');
is($body->{action}, 'add_members', 'lock timeout: action echoed');
$node->safe_psql('postgres', "ALTER SYSTEM SET lock_timeout = 0; ALTER SYSTEM SET statement_timeout = '500ms'");
reload_and_settle();
($code, $body) = post(page('add_members', 'locked', 'L', ['X']));
is_failure($code, $body, '503', 'statement timeout');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET lock_timeout; ALTER SYSTEM RESET statement_timeout');
reload_and_settle();
$locker->query_safe('COMMIT');
$locker->quit;
is($node->safe_psql('postgres', "SELECT count(*) FROM cohortsync.members WHERE cohort_id = 'locked'"),
	'0', 'nothing written by the 503s');
($code, $body) = post(page('add_members', 'locked', 'L', ['X']));
is_success($code, $body, 'add_members', 'the retry succeeds once the lock is gone');
like(slurp_file($node->logfile), qr/POST \/mixpanel answered 503: canceling statement due to lock timeout/,
	'the 503 is explained in the server log');

# --- SIGHUP: credentials and settings change without a restart ------------------------------------
set_password('mixpanel', 'cs-secret-staple-horse');
reload_and_settle();
($code, $body) = post(page('add_members', '4242', 'T+90', []));
is_failure($code, $body, '401', 'after SIGHUP: old password refused');
$auth = 'mixpanel:cs-secret-staple-horse';
($code, $body) = post(page('add_members', '4242', 'T+90', []));
is_success($code, $body, 'add_members', 'after SIGHUP: new password accepted');
set_password('mixpanel-eu', 'cs-secret-battery-staple');
$node->safe_psql('postgres', "SELECT cohortsync.drop_webhook_user('mixpanel')");
reload_and_settle();
($code, $body) = post(page('add_members', '4242', 'T+90', []));
is_failure($code, $body, '401', 'after SIGHUP: dropped user refused');
$auth = 'mixpanel-eu:cs-secret-battery-staple';
($code, $body) = post(page('add_members', '4242', 'T+90', []));
is_success($code, $body, 'add_members', 'after SIGHUP: added user accepted');

$node->safe_psql('postgres', "ALTER SYSTEM SET cohortsync.http_max_body = '2kB'");
reload_and_settle();
($code, $body) = post(page('add_members', 'big', 'B', [ map { "member-$_" } 1 .. 30 ]));
is_failure($code, $body, '413', 'after SIGHUP: smaller http_max_body applies');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET cohortsync.http_max_body');

my $port2 = PostgreSQL::Test::Cluster::get_free_port();
$node->safe_psql('postgres', "ALTER SYSTEM SET cohortsync.http_listen = '127.0.0.1:$port2'");
$node->reload;
ok(poll_http('200', url => "http://127.0.0.1:$port2", path => '/healthz'),
	'after SIGHUP: listening on the new port');
($code) = http(path => '/healthz');
is($code, '000', 'after SIGHUP: the old port is closed');
is(listener_pid(), $pid, 'no restart of the acceptor through all of that');
is(worker_pids(), $workers, 'no restart of the workers through all of that');

# --- HTTPS with a self-signed certificate ----------------------------------------------------------
my ($cert, $key) = ("$tmp/server.crt", "$tmp/server.key");
my ($sslout, $sslerr) = ('', '');
ok( IPC::Run::run(
		[
			'openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1',
			'-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
			'-keyout', $key, '-out', $cert
		],
		'>', \$sslout, '2>', \$sslerr),
	'self-signed certificate made');
chmod 0600, $key;
$node->safe_psql('postgres',
	"ALTER SYSTEM SET cohortsync.http_ssl_cert_file = '$cert'; ALTER SYSTEM SET cohortsync.http_ssl_key_file = '$key'");
$node->reload;
my $https = "https://127.0.0.1:$port2";
ok(poll_http('200', url => $https, path => '/healthz', cacert => $cert), 'HTTPS: healthz');
($code, $body) = post(page('add_members', 'tls', 'S', ['Z']), url => $https, cacert => $cert);
is_success($code, $body, 'add_members', 'HTTPS: a page over TLS, certificate verified');
($code, $body) = post(page('add_members', 'tls', 'S', ['Z']), url => $https, cacert => $cert, auth => 'mixpanel-eu:cs-secret-nope');
is_failure($code, $body, '401', 'HTTPS: wrong password');
($code) = post(page('add_members', 'tls', 'S', ['Z']), url => "http://127.0.0.1:$port2");
isnt($code, '200', 'HTTPS: plain HTTP is not served');
is($node->safe_psql('postgres', "SELECT count(*) FROM cohortsync.members WHERE cohort_id = 'tls'"),
	'1', 'HTTPS: the page was stored');
is(listener_pid(), $pid, 'HTTPS turned on without a restart of the worker');

# --- settings: the access log level, and a listen address that makes no sense ---------------------
$node->safe_psql('postgres', "ALTER SYSTEM SET cohortsync.http_log_level = 'off'");
reload_and_settle();
($code) = http(url => $https, cacert => $cert, path => '/quiet-please');
is($code, '404', 'http_log_level off: request answered');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET cohortsync.http_log_level');
reload_and_settle();
($code) = http(url => $https, cacert => $cert, path => '/loud-again');
my $log_now = slurp_file($node->logfile);
unlike($log_now, qr{/quiet-please}, 'http_log_level off: no access log line');
like($log_now, qr{"GET /loud-again" 404}, 'http_log_level log: access log line');
my ($ret, $stdout, $stderr) =
  $node->psql('postgres', "ALTER SYSTEM SET cohortsync.http_listen = 'no-port-here'");
isnt($ret, 0, 'an http_listen without a port is refused');
like($stderr, qr/Use host:port/, 'and the error says what is expected');

# --- SIGTERM during a request: it is cancelled and answered 503; the worker comes back --------------
$locker = $node->background_psql('postgres');
$locker->query_safe('BEGIN; LOCK TABLE cohortsync.cohorts IN ACCESS EXCLUSIVE MODE;');
$node->safe_psql('postgres', 'ALTER SYSTEM SET lock_timeout = 0');
reload_and_settle();
my $termout = '';
my $term = IPC::Run::start(
	curl_cmd(auth => $auth, url => $https, cacert => $cert, body => page('add_members', 'term', 'Q', ['Y'])),
	'>', \$termout, '2>', \my $termerr);
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'cohortsync http listener' AND wait_event_type = 'Lock'"),
	'a request waits for the lock');
my $waiting = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'cohortsync http listener' AND wait_event_type = 'Lock'");
$node->safe_psql('postgres', "SELECT pg_terminate_backend($waiting)");
$term->finish;
($code, $body) = parse_output($termout);
is_failure($code, $body, '503', 'SIGTERM during a request');
like($body->{error}{message} // '', qr/shutting down/, 'SIGTERM during a request: says the server is shutting down');
$locker->query_safe('COMMIT');
$locker->quit;
$node->safe_psql('postgres', 'ALTER SYSTEM RESET lock_timeout');
$node->reload;
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 4 FROM pg_stat_activity WHERE backend_type = 'cohortsync http listener' AND pid <> $waiting"),
	'the listener worker is started again after it was terminated');
ok(poll_http('200', url => $https, path => '/healthz', cacert => $cert), 'and answers again');
is($node->safe_psql('postgres', "SELECT count(*) FROM cohortsync.members WHERE cohort_id = 'term'"),
	'0', 'nothing written by the cancelled request');

# --- a standby is in recovery: 503 for pages and for healthz ----------------------------------------
$node->backup('standby_backup');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($node, 'standby_backup', has_streaming => 1);
my $port3 = PostgreSQL::Test::Cluster::get_free_port();
# the backup carries the primary's ALTER SYSTEM settings; later lines win
$standby->append_conf('postgresql.auto.conf', qq{
cohortsync.http_listen = '127.0.0.1:$port3'
cohortsync.http_ssl_cert_file = ''
cohortsync.http_ssl_key_file = ''
});
$standby->start;
my $on_standby = "http://127.0.0.1:$port3";
ok(poll_http('503', url => $on_standby, path => '/healthz'), 'standby: healthz 503');
($code, $body) = post(page('add_members', 'standby', 'R', ['W']), url => $on_standby);
is_failure($code, $body, '503', 'standby: a page is answered 503');
like($body->{error}{message} // '', qr/recovery/, 'standby: says the database is in recovery');
$standby->stop('fast');
unlike(slurp_file($standby->logfile), qr/\@example\.com|cs-secret-battery-staple/,
	'standby: no member email or password in its log');

# --- shutdown, and what the log holds ------------------------------------------------------------
$node->stop('fast');
my $log = slurp_file($node->logfile);
like($log, qr/cohortsync http: listener shutting down/, 'listener stops on SIGTERM');
like($log, qr/cohortsync http: 127\.0\.0\.1 "POST \/mixpanel" 200, \d+ bytes in, \d+ bytes out/,
	'access log lines are written');
# the wrong passwords too: a refused attempt is often a typo of the right one
for my $secret (qw(cs-secret-horse-battery cs-secret-staple-horse cs-secret-battery-staple
	cs-secret-wrong cs-secret-nope))
{
	unlike($log, qr/\Q$secret\E/, "no password in the server log ($secret)");
}
unlike($log, qr/\@example\.com/, 'no member email in the server log');
unlike($log, qr/Authorization|Basic [A-Za-z0-9+\/=]{8,}/, 'no Authorization header in the server log');
unlike($log, qr/SCRAM-SHA-256\$/, 'no password hash in the server log');

done_testing();
