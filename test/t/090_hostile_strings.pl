# SQL injection, end to end: pages whose ids, names and member fields are full of
# quotes, backslashes, SQL and JSON, POSTed to the listener over HTTP, are stored
# byte for byte, and the CleverTap stand-in receives the identical strings in the
# upload body, for a destination whose name is itself hostile. And a passcode set
# through a bound parameter stays out of the statement log.
use strict;
use warnings;

use Digest::MD5;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CsDelivery;

my @hostile = (
	q{'; DROP TABLE cohortsync.members; --},
	q{\x27},
	q{O'Brien},
	q{"quoted"},
	q{\\\\},                                   # two backslashes
	q{$$},
	q{%s%n%x},
	"two\nlines\r\ttab",
	q{Robert'); DELETE FROM cohortsync.cohorts; --},
	q<"}],"d":[{"type":"event","identity":"evil"}]} ]>,    # JSON, against a body built by pasting
	"Zo\x{eb} \x{1F680} \x{202E}rtl",
	q<\u0041\n $1 ${x} `id` \N \.>,
);
my $n = scalar(@hostile);
my $json = JSON::PP->new->utf8->canonical;
my $tmp = PostgreSQL::Test::Utils::tempdir();

my $ct = start_standin();
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $node = new_delivery_node('hostile', undef,
	conf => [ "cohortsync.http_listen = '127.0.0.1:$port'" ]);
sub sql { return $node->safe_psql('postgres', $_[0]); }
sub lit { my $s = shift; $s =~ s/'/''/g; return "'$s'"; }    # standard_conforming_strings is on

my $dest = q{it's "ct"; DROP TABLE cohortsync.outbox; --};
my $password = 'cs-secret-hostile-listener';
sql("SELECT cohortsync.connect_clevertap(" . lit($dest) . ", 'ACC', '$PASSCODE', 'eu1', '$ct->{url}')");
sql("BEGIN; SET LOCAL log_statement = 'none';
     SELECT cohortsync.add_webhook_user('mixpanel', '$password'); COMMIT;");
is(sql("SELECT name FROM cohortsync.destinations"), $dest, 'a destination named with quotes and SQL');

sub curl
{
	my (%a) = @_;
	my @cmd = ('curl', '-s', '--max-time', '20', '-w', '\n%{http_code}');
	if (defined $a{body})
	{
		my $file = "$tmp/body";
		open my $fh, '>:raw', $file or die $!;
		print $fh $a{body};
		close $fh;
		push @cmd, '-u', "mixpanel:$password", '-H', 'Content-Type: application/json',
		  '--data-binary', "\@$file";
	}
	push @cmd, "http://127.0.0.1:$port$a{path}";
	my ($out, $err) = ('', '');
	IPC::Run::run(\@cmd, '>', \$out, '2>', \$err);
	$out =~ s/\n(\d{3})\z// or return ('000', $out);
	return ($1, $out);
}
ok(wait_until(20, sub { (curl(path => '/healthz'))[0] eq '200' }), 'the listener is up');

my $cohort_name = "$hostile[2] & $hostile[7]";
sub member
{
	my ($i) = @_;
	(my $local = $hostile[$i]) =~ s/\s//g;    # the stand-in checks that Email looks like one
	return {
		mixpanel_distinct_id => $hostile[$i],
		email => "$local\@example.com",
		first_name => $hostile[$i],
		last_name => $hostile[ $n - 1 - $i ],
		'$CleverTap_user_id' => "ct $hostile[$i]",
		$hostile[$i] => $hostile[ $n - 1 - $i ] };
}
sub page
{
	my ($action, $session, @ids) = @_;
	return $json->encode({
		action => $action,
		parameters => {
			mixpanel_project_id => $hostile[0],
			mixpanel_cohort_id => $hostile[8],
			mixpanel_cohort_name => $cohort_name,
			mixpanel_cohort_description => $hostile[11],
			mixpanel_session_id => $session,
			members => [ map { member($_) } @ids ] } });
}

#------------------------------------------------------------------------------
# Stored byte for byte
#------------------------------------------------------------------------------
my ($code, $body) = curl(path => '/mixpanel', body => page('add_members', $hostile[5], 0 .. $n - 1));
is("$code $body", '200 {"action": "add_members", "status": "success"}', 'the page is applied');

my $stored = $json->decode(sql(
	"SELECT json_agg(json_build_array(distinct_id, email, first_name, last_name, properties)
	                 ORDER BY distinct_id) FROM cohortsync.members"));
is_deeply($stored,
	[ map { my $m = member($_); [ @$m{qw(mixpanel_distinct_id email first_name last_name)}, $m ] }
	  sort { $hostile[$a] cmp $hostile[$b] } 0 .. $n - 1 ],
	'members: ids, email, names and properties as sent');
is_deeply($json->decode(sql(
	"SELECT json_build_array(project_id, cohort_id, name, description) FROM cohortsync.cohorts")),
	[ $hostile[0], $hostile[8], $cohort_name, $hostile[11] ],
	'cohorts: project id, cohort id, name and description as sent');
is_deeply($json->decode(sql(
	"SELECT json_agg(json_build_array(distinct_id, session_id) ORDER BY distinct_id)
	   FROM cohortsync.membership_changes")),
	[ map { [ $_, $hostile[5] ] } sort @hostile ],
	'membership_changes: ids and session id as sent');

#------------------------------------------------------------------------------
# Sent verbatim
#------------------------------------------------------------------------------
ok(outbox_empty($node, 30), 'delivered');
sub events
{
	my ($recs, $action) = @_;
	return [ sort map { $json->encode([ $_->{identity}, $_->{evtName}, $_->{evtData} ]) }
		  grep { $_->{type} eq 'event' && $_->{evtData}{Action} eq $action } @$recs ];
}
my $recs = delivered_records($ct);
is(scalar(@$recs), 2 * $n, 'an event and a profile per member, and nothing else');
is_deeply(events($recs, 'Added'),
	[ sort map { $json->encode([ "ct $_", 'Partner Sync', {
		'Partner Segment Name' => $cohort_name, 'Action' => 'Added',
		'Partner Segment ID' => $hostile[8], 'CT Source' => 'Mixpanel',
		'Partner Name' => 'Mixpanel' } ]) } @hostile ],
	'events: identity, cohort name and cohort id arrive verbatim');
is_deeply([ sort map { $json->encode([ $_->{identity}, $_->{profileData} ]) }
	  grep { $_->{type} eq 'profile' } @$recs ],
	[ sort map { my $m = member($_); $json->encode([ "ct $hostile[$_]", {
		'Mixpanel Cohorts' => { '$add' => [$cohort_name] },
		Email => $m->{email}, Name => "$m->{first_name} $m->{last_name}" } ]) } 0 .. $n - 1 ],
	'profiles: identity, Email and Name arrive verbatim');

#------------------------------------------------------------------------------
# Removing them by those ids
#------------------------------------------------------------------------------
standin_post($ct, '/_reset');
my @gone = grep { $_ % 2 == 0 } 0 .. $n - 1;
($code, $body) = curl(path => '/mixpanel', body => page('remove_members', $hostile[1], @gone));
is("$code $body", '200 {"action": "remove_members", "status": "success"}', 'a removal by hostile ids');
is_deeply($json->decode(sql("SELECT json_agg(distinct_id ORDER BY distinct_id) FROM cohortsync.members")),
	[ sort map { $hostile[$_] } grep { $_ % 2 == 1 } 0 .. $n - 1 ], 'exactly those are gone');
ok(outbox_empty($node, 30), 'the removals are delivered');
is_deeply(events(delivered_records($ct), 'Removed'),
	[ sort map { $json->encode([ "ct $hostile[$_]", 'Partner Sync', {
		'Partner Segment Name' => $cohort_name, 'Action' => 'Removed',
		'Partner Segment ID' => $hostile[8], 'CT Source' => 'Mixpanel',
		'Partner Name' => 'Mixpanel' } ]) } @gone ],
	'removal events arrive verbatim');
is(sql("SELECT count(*) FROM cohortsync.failed_records"), '0', 'nothing was refused');

#------------------------------------------------------------------------------
# A passcode as a bound parameter: log_statement = all logs bound values too
# ("DETAIL:  parameters: $1 = ..."), unless log_parameter_max_length = 0. With it,
# the statement is logged with its placeholder, and the passcode nowhere
# (test/scan_logs.py checks the whole log afterwards, too).
#------------------------------------------------------------------------------
sql("BEGIN; SET LOCAL log_statement = 'none';
     SELECT cohortsync.connect_clevertap('plain', 'ACC', 'cs-secret-plain-old', 'eu1', 'http://127.0.0.1:9');
     COMMIT;");
my $bound = 'cs-secret-bound-parameter';
my $log_from = -s $node->logfile;
$node->pgbench("--no-vacuum -M extended -t 1 -D pc=$bound", 0, [qr{processed: 1/1}], [qr{^$}],
	'pgbench sets a passcode as a bound parameter',
	{ '090_bound' => "SET log_parameter_max_length = 0;\n"
		  . "SELECT cohortsync.set_clevertap_passcode('plain', :pc);\n" });
is(sql("SELECT md5(passcode) FROM cohortsync.destination_secrets WHERE name = 'plain'"),
	Digest::MD5::md5_hex($bound), 'the passcode was set');
my $log = substr(slurp_file($node->logfile), $log_from);
like($log, qr/execute [^:]*: SELECT cohortsync\.set_clevertap_passcode\('plain', \$1\)/,
	'the statement is logged with its placeholder');
unlike($log, qr/\Q$bound\E|parameters: \$1/, 'the bound passcode is not');

$node->stop;
done_testing();
