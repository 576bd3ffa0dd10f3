# Helpers for the delivery TAP tests: the stand-ins of every destination kind, a
# node with the extension and a destination, webhook pages, and waiting.
package CsDelivery;

use strict;
use warnings;

use Exporter 'import';
use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
use Time::HiRes qw(usleep time);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

our @EXPORT = qw(start_standin stop_standin standin_get standin_post new_delivery_node page_sql
  wait_until outbox_empty delivered_records canonical standin_tally standin_requests worker_pid
  connect_sql connect_every_kind change_keys @KINDS $PASSCODE);

# The destination kinds; each has a stand-in test/standin/<kind>_standin.py.
our @KINDS = qw(clevertap mparticle braze);

# Every passcode and password the tests use contains "cs-secret": scripts/test
# runs every suite with log_statement = all and DEBUG1 logging, then fails if
# "cs-secret" shows up in a server log anywhere but in the statement that set
# it (test/scan_logs.py). Use this one, or another that contains the marker.
our $PASSCODE = 'cs-secret-passcode';

my $json = JSON::PP->new->canonical(1);
my $http = HTTP::Tiny->new(timeout => 10, verify_SSL => 0);

# Every stand-in started here, stopped when the test script exits however it exits:
# IPC::Run leaves its children running otherwise, and a stray stand-in would hold the
# test runner's output pipe open.
my @standins;

END
{
	local $?;    # keep the test script's exit status
	$_->kill_kill(grace => 2) for grep { $_->pumpable } @standins;
}

# The stand-in of a kind: CS_STANDIN is CleverTap's, the others are beside it.
sub standin_script
{
	my ($kind) = @_;
	return $ENV{CS_STANDIN} if ($kind // 'clevertap') eq 'clevertap';
	(my $script = $ENV{CS_STANDIN}) =~ s{clevertap_standin\.py$}{${kind}_standin.py};
	return $script;
}

# Start a stand-in (kind => 'clevertap' by default) on a free port (or on
# port => N, e.g. the port of one that was stopped); returns { port, handle, url, kind }.
# Every stand-in takes --account/--passcode: mParticle's as its api key and
# secret, Braze's passcode as its api key.
sub start_standin
{
	my (%opt) = @_;
	my $dir = PostgreSQL::Test::Utils::tempdir();
	my $port_file = "$dir/port";
	my $kind = $opt{kind} // 'clevertap';
	my @cmd = ('python3', standin_script($kind), '--port', $opt{port} // '0', '--port-file', $port_file,
		'--account', $opt{account} // 'ACC', '--passcode', $opt{passcode} // $PASSCODE,
		@{ $opt{args} // [] });
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(\@cmd, '>', \$out, '2>', \$err);
	push @standins, $h;
	for (1 .. 100)
	{
		last if -s $port_file;
		usleep(100_000);
	}
	die "stand-in did not start: $err" unless -s $port_file;
	my $port = PostgreSQL::Test::Utils::slurp_file($port_file);
	chomp $port;
	my $scheme = $opt{args} && grep({ $_ eq '--tls-cert' } @{ $opt{args} }) ? 'https' : 'http';
	return { port => $port, handle => $h, url => "$scheme://127.0.0.1:$port", kind => $kind };
}

# Stop a stand-in (SIGTERM); its port then refuses connections.
sub stop_standin
{
	my ($s) = @_;
	$s->{handle}->kill_kill(grace => 5);
	return;
}

# How often each record arrived at the stand-in: { "identity what action" => n }.
# CleverTap: what is "event" or "profile", action Added/Removed for events and
# $add/$remove for profiles. mParticle: what is "batch", action "<cohort>=true|false".
# Braze: what is "attributes" (action add/remove of the cohorts property) or
# "events" (action the event's name). Python reads /_records: decoding hundreds
# of thousands of records in pure Perl (JSON::PP) would take minutes.
sub standin_tally
{
	my ($s) = @_;
	my $py = <<'PY';
import json, sys, urllib.request
kind = sys.argv[2]
recs = json.load(urllib.request.urlopen(sys.argv[1] + "/_records", timeout=120))["records"]
tally = {}
def count(key):
    tally[key] = tally.get(key, 0) + 1
for r in recs:
    if kind == "mparticle":
        ident = str(r["mpid"]) if "mpid" in r else (r.get("user_identities") or {}).get("customer_id")
        attrs = r.get("user_attributes") or {}
        action = ",".join("%s=%s" % (k, json.dumps(v)) for k, v in sorted(attrs.items())
                          if isinstance(v, bool)) or "-"
        count("%s batch %s" % (ident, action))
    elif kind == "braze":
        if r.get("_array") == "events":
            count("%s events %s" % (r.get("external_id"), r.get("name")))
        else:
            mc = r.get("Mixpanel Cohorts") or {}
            count("%s attributes %s" % (r.get("external_id"), "".join(sorted(mc.keys())) or "-"))
    else:
        if r.get("type") == "event":
            action = (r.get("evtData") or {}).get("Action", "")
        else:
            mc = (r.get("profileData") or {}).get("Mixpanel Cohorts") or {}
            action = "".join(sorted(mc.keys())) or "-"
        count("%s %s %s" % (r.get("identity"), r.get("type"), action))
for k, n in tally.items():
    print("%s\t%d" % (k, n))
PY
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'python3', '-c', $py, $s->{url}, $s->{kind} // 'clevertap' ], '>', \$out, '2>', \$err)
	  or die "standin_tally: $err";
	my %tally = map { split /\t/ } split /\n/, $out;
	return \%tally;
}

# The records of each request the stand-in accepted: { _seq => number of records }.
sub standin_requests
{
	my ($s) = @_;
	my $py = <<'PY';
import json, sys, urllib.request
recs = json.load(urllib.request.urlopen(sys.argv[1] + "/_records", timeout=120))["records"]
sizes = {}
for r in recs:
    sizes[r["_seq"]] = sizes.get(r["_seq"], 0) + 1
for k, n in sizes.items():
    print("%d\t%d" % (k, n))
PY
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'python3', '-c', $py, $s->{url} ], '>', \$out, '2>', \$err)
	  or die "standin_requests: $err";
	my %sizes = map { split /\t/ } split /\n/, $out;
	return \%sizes;
}

# The pid of the running background worker of this type, or '' (also while the
# server restarts after a crash).
sub worker_pid
{
	my ($node, $type) = @_;
	my ($ret, $out) = (1, '');
	eval {
		($ret, $out) = $node->psql('postgres',
			"SELECT pid FROM pg_stat_activity WHERE backend_type = '" . ($type // 'cohortsync delivery') . "'");
	};
	return !$@ && $ret == 0 ? $out : '';
}

# HTTP::Tiny needs IO::Socket::SSL for https, which may be missing: use curl there.
sub curl_json
{
	my ($method, $url, $body) = @_;
	my @cmd = ('curl', '-sk', '-X', $method, $url);
	push @cmd, '-H', 'Content-Type: application/json', '--data', encode_json($body) if $body;
	my ($out, $err) = ('', '');
	IPC::Run::run(\@cmd, '>', \$out, '2>', \$err) or die "curl $url: $err";
	return decode_json($out);
}

sub standin_get
{
	my ($s, $path) = @_;
	return curl_json('GET', "$s->{url}$path") if $s->{url} =~ /^https/;
	my $r = $http->get("$s->{url}$path");
	die "GET $path: $r->{status}" unless $r->{success};
	return decode_json($r->{content});
}

sub standin_post
{
	my ($s, $path, $body) = @_;
	return curl_json('POST', "$s->{url}$path", $body // {}) if $s->{url} =~ /^https/;
	my $r = $http->post("$s->{url}$path",
		{ content => encode_json($body // {}), headers => { 'Content-Type' => 'application/json' } });
	die "POST $path: $r->{status} $r->{content}" unless $r->{success};
	return decode_json($r->{content});
}

# A primary with the library preloaded, the extension in database "postgres"
# (at version => V when given, else the default), a destination "ct" pointing at
# the stand-in, and a page helper.
sub new_delivery_node
{
	my ($name, $standin, %opt) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $opt{init} // {} });
	$node->append_conf('postgresql.conf', join("\n",
		"shared_preload_libraries = 'cohortsync'",
		"cohortsync.poll_interval = '500ms'",
		"cohortsync.request_timeout = '20s'",
		"cohortsync.connect_timeout = '2s'",
		@{ $opt{conf} // [] }) . "\n");
	$node->start;
	my $db = $opt{dbname} // 'postgres';
	$node->safe_psql('postgres', "CREATE DATABASE $db") if $db ne 'postgres';
	$node->safe_psql($db, "CREATE EXTENSION cohortsync" . ($opt{version} ? " VERSION '$opt{version}'" : ''));
	$node->safe_psql($db, page_sql());
	$node->safe_psql($db, connect_sql($standin->{kind}, 'ct', $standin->{url})) if $standin;
	return $node;
}

# The statement that connects destination $name of $kind to $url with the
# stand-in's credentials (or secret => ... instead of $PASSCODE).
sub connect_sql
{
	my ($kind, $name, $url, %opt) = @_;
	my $secret = $opt{secret} // $PASSCODE;
	return "SELECT cohortsync.connect_clevertap('$name', 'ACC', '$secret', 'eu1', '$url')"
	  if ($kind // 'clevertap') eq 'clevertap';
	return "SELECT cohortsync.connect_mparticle('$name', 'ACC', '$secret', 'us1', '$url')"
	  if $kind eq 'mparticle';
	return "SELECT cohortsync.connect_braze('$name', '$secret', 'US-01', '$url')"
	  if $kind eq 'braze';
	die "unknown kind $kind";
}

# Beside CleverTap's destination "ct" (at stand-in $ct), connect one destination of
# every other kind, named after it, each at a stand-in of its own. Returns
# ({ kind => stand-in }, { kind => destination name }) for every kind.
sub connect_every_kind
{
	my ($node, $ct, $db) = @_;
	my %standin = (clevertap => $ct);
	my %dest = (clevertap => 'ct');
	for my $kind (grep { $_ ne 'clevertap' } @KINDS)
	{
		$standin{$kind} = start_standin(kind => $kind);
		$dest{$kind} = $kind;
		$node->safe_psql($db // 'postgres', connect_sql($kind, $kind, $standin{$kind}{url}));
	}
	return (\%standin, \%dest);
}

# The keys standin_tally counts for one change of member $id (added or removed)
# in cohort $cohort: CleverTap gets an event and a profile record, mParticle a
# batch, Braze an attribute object (the members have no $braze_external_id or
# $mparticle_user_id, so their distinct id identifies them).
sub change_keys
{
	my ($kind, $id, $added, $cohort) = @_;
	return ("ct-$id event " . ($added ? 'Added' : 'Removed'), "ct-$id profile " . ($added ? '$add' : '$remove'))
	  if $kind eq 'clevertap';
	return ("$id batch $cohort=" . ($added ? 'true' : 'false')) if $kind eq 'mparticle';
	return ("$id attributes " . ($added ? 'add' : 'remove')) if $kind eq 'braze';
	die "unknown kind $kind";
}

# public.page(action, session, ids, cohort, name): one webhook page; members
# have $CleverTap_user_id 'ct-<id>' unless the id starts with "nocid".
sub page_sql
{
	return q{
CREATE FUNCTION public.page(action text, session text, ids text[],
                            cohort text DEFAULT '4242', cohort_name text DEFAULT 'Power users')
RETURNS jsonb LANGUAGE sql AS $$
  SELECT cohortsync.ingest(jsonb_build_object(
    'action', action,
    'parameters', jsonb_build_object(
      'mixpanel_project_id', 1001, 'mixpanel_cohort_id', cohort,
      'mixpanel_cohort_name', cohort_name, 'mixpanel_session_id', session,
      'page_info', jsonb_build_object('total_pages', 1, 'page_count', 1),
      'members', coalesce((SELECT jsonb_agg(
          jsonb_build_object('mixpanel_distinct_id', id, 'email', lower(id) || '@example.com',
                             'first_name', id, 'last_name', 'Doe',
                             'phone_number', '+1 555 010 00' || ascii(id) % 10)
          || CASE WHEN id LIKE 'nocid%' THEN '{}'::jsonb
                  ELSE jsonb_build_object('$CleverTap_user_id', 'ct-' || id) END
          ORDER BY id) FROM unnest(ids) id), '[]'))))
$$;
};
}

# Poll a Perl condition every 100 ms for up to $secs seconds.
sub wait_until
{
	my ($secs, $cond) = @_;
	my $end = time() + $secs;
	while (time() < $end)
	{
		return 1 if $cond->();
		usleep(100_000);
	}
	return $cond->() ? 1 : 0;
}

sub outbox_empty
{
	my ($node, $secs, $db) = @_;
	return wait_until($secs // 60, sub {
		$node->safe_psql($db // 'postgres', "SELECT count(*) FROM cohortsync.outbox") eq '0'
	});
}

# The stand-in's stored records, without its bookkeeping fields.
sub delivered_records
{
	my ($s) = @_;
	my $recs = standin_get($s, '/_records')->{records};
	return $recs;
}

sub canonical
{
	my ($rec) = @_;
	my %r = %$rec;
	delete @r{qw(_seq _at _account)};
	return $json->encode(\%r);
}

1;
