# Delivery when CleverTap misbehaves (issue #6, "Faults"): the stand-in down
# (connection refused), hanging until the request timeout, resetting
# connections, answering 429 to everything for a while, answering garbage.
# Each time the records wait in the outbox, their attempts grow, the status view
# shows the error, nothing is dropped and nothing arrives; once the fault is
# over they are all delivered, once, without anyone touching the destination.
# With a small cohortsync.max_retry_age a record goes to failed_records with a
# clear message, and not before it is that old. Last, ALTER SYSTEM + reload
# while requests are in flight: the worker takes the new batch size and
# concurrency, refuses what it cannot take, and carries on.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CsDelivery;

# One destination per fault, each with its own stand-in, all faulty at once: a
# destination's trouble must not hold up the others' retries, and the test takes
# the time of one fault rather than five.
my $node = new_delivery_node('faults', undef,
	conf => [ "cohortsync.request_timeout = '1s'", "cohortsync.connect_timeout = '500ms'" ]);

sub sql { return $node->safe_psql('postgres', $_[0]); }

my %faults = (
	refused => {
		error => qr/^Couldn't connect to server/,
		# stopped, then started again on the same port
		start => sub { stop_standin($_[0]) },
		stop => sub { %{ $_[0] } = %{ start_standin(port => $_[0]->{port}) } },
	},
	hang => {
		error => qr/^Timeout was reached/,
		start => sub { standin_post($_[0], '/_control', { hang => JSON::PP::true }) },
		stop => sub { standin_post($_[0], '/_control', { hang => JSON::PP::false }) },
	},
	reset => {
		error => qr/Connection reset by peer/,
		start => sub { standin_post($_[0], '/_control', { reset => 100000 }) },
		stop => sub { standin_post($_[0], '/_control', { reset => 0 }) },
	},
	t429 => {
		error => qr/^HTTP 429: Too many concurrent requests/,
		start => sub { standin_post($_[0], '/_control', { status_all => 429 }) },
		stop => sub { standin_post($_[0], '/_control', { status_all => undef }) },
	},
	garbage => {
		error => qr/^HTTP 200 with an unreadable body/,
		start => sub { standin_post($_[0], '/_control', { garbage => 100000 }) },
		stop => sub { standin_post($_[0], '/_control', { garbage => 0 }) },
	});
my @names = sort keys %faults;
for my $f (@names)
{
	my $s = $faults{$f}{standin} = start_standin();
	sql("SELECT cohortsync.connect_clevertap('$f', 'ACC', '$PASSCODE', 'eu1', '$s->{url}')");
	$faults{$f}{start}->($s);
}

my @ids = map { "f$_" } 1 .. 3;
sql("SELECT page('add_members', 'fault', ARRAY['" . join("','", @ids) . "'], 'c-fault', 'Faults')");
ok(wait_until(30, sub {
	sql("SELECT bool_and(attempts >= 2) AND count(DISTINCT destination) = 5 FROM cohortsync.outbox") eq 't' }),
	'faults: the records of every destination are retried (attempts grow)');
for my $f (@names)
{
	my $s = $faults{$f}{standin};
	is(sql("SELECT count(*) FROM cohortsync.outbox WHERE destination = '$f'"), '6',
		"$f: all six records wait in the outbox");
	like(sql("SELECT last_error FROM cohortsync.destination_status WHERE name = '$f'"), $faults{$f}{error},
		"$f: the status view shows the error");
	like(sql("SELECT string_agg(DISTINCT last_error, ' | ') FROM cohortsync.outbox WHERE destination = '$f'"),
		$faults{$f}{error}, "$f: so does every waiting record");
	# (a stopped stand-in cannot be asked, and can have received nothing)
	my $recs = $f eq 'refused' ? [] : delivered_records($s);
	is(scalar(@$recs), 0, "$f: nothing arrived meanwhile");
}
is(sql("SELECT count(*) FROM cohortsync.failed_records"), '0', 'faults: nothing is dropped');

# no resume_destination(), no reload: the worker's own retries deliver them
$faults{$_}{stop}->($faults{$_}{standin}) for @names;
ok(outbox_empty($node, 40), 'faults: once they are over, the outbox drains by itself');
for my $f (@names)
{
	is_deeply(standin_tally($faults{$f}{standin}),
		{ map { ("ct-$_ event Added" => 1, "ct-$_ profile \$add" => 1) } @ids },
		"$f: every record arrived, once");
	cmp_ok(sql("SELECT requests FROM cohortsync.destination_status WHERE name = '$f'"), '>=', 3,
		"$f: after several requests");
}
is(sql("SELECT count(*) FROM cohortsync.failed_records"), '0', 'faults: none failed');
sql("SELECT cohortsync.disconnect_clevertap(name) FROM cohortsync.destinations");

my $ct = $faults{t429}{standin};
sql("SELECT cohortsync.connect_clevertap('ct', 'ACC', '$PASSCODE', 'eu1', '$ct->{url}')");

#------------------------------------------------------------------------------
# cohortsync.max_retry_age: a record that cannot be delivered goes to
# failed_records once it is older than that, not before, with a message that
# says why and what the last error was. (10 s: the destination's backoff spaces
# the retries 1, 2, 4, 8 s apart, and a loaded machine must still see the
# records retried while they are younger than that.)
#------------------------------------------------------------------------------
standin_post($ct, '/_reset');
sql("ALTER SYSTEM SET cohortsync.max_retry_age = '10s'");
sql("SELECT pg_reload_conf()");
standin_post($ct, '/_control', { status_all => 503 });
sql("SELECT page('add_members', 'old', ARRAY['old1', 'old2'], 'c-old', 'Old')");
ok(wait_until(10, sub { sql("SELECT min(attempts) >= 2 FROM cohortsync.outbox") eq 't' }),
	'max_retry_age: retried');
is(sql("SELECT CASE WHEN now() - min(created_at) < interval '10s' THEN count(*)::text
                    ELSE 'too late to tell' END FROM cohortsync.outbox"),
	'4', 'max_retry_age: records younger than it keep waiting');
ok(wait_until(60, sub { sql("SELECT count(*) FROM cohortsync.failed_records") eq '4' }),
	'max_retry_age: older ones go to failed_records');
is(sql("SELECT count(*) FROM cohortsync.failed_records WHERE failed_at - created_at < interval '10s'"),
	'0', 'max_retry_age: none before it was 10 s old');
is(sql("SELECT DISTINCT coalesce(code::text, 'null') || ' ' || message FROM cohortsync.failed_records"),
	'null not delivered within cohortsync.max_retry_age (00:00:10); last error: HTTP 503: Service unavailable',
	'max_retry_age: with a clear message');
is(sql("SELECT count(*) || ' ' || (SELECT failed FROM cohortsync.destination_status) FROM cohortsync.outbox"),
	'0 4', 'max_retry_age: the outbox is empty, the status view counts them');
is(scalar(@{ delivered_records($ct) }), 0, 'max_retry_age: none arrived');
standin_post($ct, '/_control', { status_all => undef });
is(sql("SELECT cohortsync.replay_failed('ct')"), '4', 'max_retry_age: they can be replayed');
# the replay ended the destination's backoff from the outage: no wait for its next probe
ok(outbox_empty($node, 20), 'max_retry_age: and are then delivered');
sql("ALTER SYSTEM RESET cohortsync.max_retry_age");
sql("SELECT pg_reload_conf()");

#------------------------------------------------------------------------------
# ALTER SYSTEM + reload while requests are in flight.
#------------------------------------------------------------------------------
standin_post($ct, '/_reset');
standin_post($ct, '/_control', { delay_ms => 300 });
my $pid = worker_pid($node);
sql("SELECT page('add_members', 'busy', (SELECT array_agg('busy' || g) FROM generate_series(1, 3000) g), 'c-busy', 'Busy')");
ok(wait_until(20, sub { standin_get($ct, '/_stats')->{in_flight} >= 2 }), 'reload: requests in flight');
sql("ALTER SYSTEM SET cohortsync.batch_size = 100");
sql("ALTER SYSTEM SET cohortsync.max_inflight = 1");
sql("SELECT pg_reload_conf()");
# what was in flight at the reload is answered within 300 ms; then the new values
# rule. Requests that arrive later have a higher sequence number than any stored now.
sleep 1;
my %size = %{ standin_requests($ct) };
my $last_seq = (sort { $b <=> $a } keys %size)[0];
# from now on a second concurrent request would be answered 429 (and counted)
standin_post($ct, '/_control', { delay_ms => 50, max_concurrent => 1 });
ok(outbox_empty($node, 90), 'reload: the outbox drains');
my %later = %{ standin_requests($ct) };
delete @later{ grep { $_ <= $last_seq } keys %later };
cmp_ok((sort { $b <=> $a } values %size)[0], '>', 100,
	'reload: before it, requests carried more than 100 records');
cmp_ok(scalar(keys %later), '>=', 5, 'reload: many requests after it');
cmp_ok((sort { $b <=> $a } values %later)[0], '<=', 100,
	'reload: none of them carries more than the new batch_size (100)');
is(standin_get($ct, '/_stats')->{by_status}{429} // 0, 0,
	'reload: one request at a time (the new max_inflight): none was answered 429');
is_deeply(standin_tally($ct),
	{ map { ("ct-busy$_ event Added" => 1, "ct-busy$_ profile \$add" => 1) } 1 .. 3000 },
	'reload: every record arrived, once');
is(worker_pid($node), $pid, 'reload: the same worker throughout');

# a value out of range is refused by ALTER SYSTEM itself; one that needs a
# restart is refused at the reload, in the log, and the worker carries on
my ($ret, $out, $err) = $node->psql('postgres', 'ALTER SYSTEM SET cohortsync.batch_size = 5000');
like($err, qr/5000 is outside the valid range for parameter "cohortsync.batch_size" \(1 \.\. 1000\)/,
	'reload: an impossible batch_size is refused with a clear message');
my $log_offset = -s $node->logfile;
sql("ALTER SYSTEM SET cohortsync.database = 'elsewhere'");
sql("SELECT pg_reload_conf()");
ok(wait_until(10, sub {
	slurp_file($node->logfile, $log_offset) =~
	  /parameter "cohortsync.database" cannot be changed without restarting the server/ }),
	'reload: cohortsync.database says it needs a restart');
sql("ALTER SYSTEM RESET ALL");
sql("SELECT pg_reload_conf()");
standin_post($ct, '/_reset');
sql("SELECT page('add_members', 'after', ARRAY['after1'], 'c-after', 'After')");
ok(outbox_empty($node, 20), 'reload: delivery goes on');
is(worker_pid($node), $pid, 'reload: still the same worker');
unlike(slurp_file($node->logfile), qr/PANIC|server process .* was terminated/, 'no crash');

$node->stop;
done_testing();
