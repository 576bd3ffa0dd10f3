# Every destination kind (issue #13), each against its stand-in: the delivery
# behaviours (exact records, batching, partial answers, 429/5xx retries with
# Retry-After, pause on bad credentials and resume, per-identity order), and
# cohortsync.test_destination with good and bad credentials and with nobody
# answering: whether the credentials work, why not, and never the secret.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CsDelivery;

my $node = new_delivery_node('kinds', undef,
	conf => [ "cohortsync.request_timeout = '2s'", "cohortsync.connect_timeout = '1s'" ]);

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub test_destination
{
	my ($name) = @_;
	my $out = sql("SELECT cohortsync.test_destination('$name')");
	return (decode_json($out), $out);
}

# a port nothing listens on: a stand-in started and stopped
my $gone = start_standin();
stop_standin($gone);

for my $kind (@KINDS)
{
  SKIP:
	{
		skip "no connect function for $kind yet", 1
		  unless sql("SELECT to_regproc('cohortsync.connect_$kind') IS NOT NULL") eq 't';
		my $s = start_standin(kind => $kind);
		sql(connect_sql($kind, "$kind-good", $s->{url}));
		sql(connect_sql($kind, "$kind-bad", $s->{url}, secret => 'cs-secret-wrong'));
		sql(connect_sql($kind, "$kind-gone", $gone->{url}));

		my ($good, $good_text) = test_destination("$kind-good");
		is($good->{ok}, JSON::PP::true, "$kind: good credentials work") or diag($good_text);
		is($good->{kind}, $kind, "$kind: the answer names the kind");

		my ($bad, $bad_text) = test_destination("$kind-bad");
		is($bad->{ok}, JSON::PP::false, "$kind: bad credentials do not");
		like($bad->{http_status}, qr/^40[134]$/, "$kind: the destination's status is shown");
		ok(defined $bad->{reason} && $bad->{reason} ne '', "$kind: with the destination's reason")
		  or diag($bad_text);
		unlike($bad_text . $good_text, qr/cs-secret/, "$kind: the answers carry no secret");

		my ($down, $down_text) = test_destination("$kind-gone");
		is($down->{ok}, JSON::PP::false, "$kind: nobody answering is not connected");
		is($down->{http_status}, undef, "$kind: no HTTP status then");
		like($down->{reason} // '', qr/connect/i, "$kind: curl's reason") or diag($down_text);

		is(scalar(@{ delivered_records($s) }), 0, "$kind: the tests sent no user data");
		is(sql("SELECT count(*) FROM cohortsync.outbox"), '0', "$kind: and queued nothing");
	}
}

#------------------------------------------------------------------------------
# Delivery, for every kind.
#------------------------------------------------------------------------------

# What arrives for a change, as standin_tally counts it.
sub expect_change
{
	my ($kind, $id, $added, $cohort) = @_;
	$cohort //= 'Power users';
	return ("ct-$id event " . ($added ? 'Added' : 'Removed') => 1,
		"ct-$id profile " . ($added ? '$add' : '$remove') => 1)
	  if $kind eq 'clevertap';
	return ("$id batch $cohort=" . ($added ? 'true' : 'false') => 1) if $kind eq 'mparticle';
	return ("$id attributes " . ($added ? 'add' : 'remove') => 1);
}

# Where in the stand-in's arrival order the change of $id arrived (the first record of it).
sub arrival
{
	my ($kind, $recs, $id, $added) = @_;
	for my $i (0 .. $#$recs)
	{
		my $r = $recs->[$i];
		return $i if $kind eq 'clevertap' && $r->{type} eq 'event' && $r->{identity} eq "ct-$id"
		  && $r->{evtData}{Action} eq ($added ? 'Added' : 'Removed');
		return $i if $kind eq 'mparticle' && ($r->{user_identities}{customer_id} // '') eq $id
		  && grep { JSON::PP::is_bool($_) && (!!$_ == !!$added) } values %{ $r->{user_attributes} // {} };
		return $i if $kind eq 'braze' && ($r->{external_id} // '') eq $id
		  && exists(($r->{'Mixpanel Cohorts'} // {})->{ $added ? 'add' : 'remove' });
	}
	return undef;
}

# The stand-in's switch that refuses one user's records, and what to expect of it.
my %refuse = (
	clevertap => [ { record_codes => { 'ct-bad1' => 516 } }, { record_codes => undef }, 2 ],
	mparticle => [ { record_errors => { 'bad1' => 'Batch refused' } }, { record_errors => undef }, 1 ],
	braze => [ { record_errors => { 'bad1' => 'EMAIL_BAD_FORMAT' } }, { record_errors => undef }, 1 ]);
# The switch that makes the destination's secret wrong, and the one that puts it back.
my %creds = (
	clevertap => [ { accounts => [ [ 'ACC', 'cs-secret-changed' ] ] }, { accounts => [ [ 'ACC', $PASSCODE ] ] } ],
	mparticle => [ { accounts => [ [ 'ACC', 'cs-secret-changed' ] ] }, { accounts => [ [ 'ACC', $PASSCODE ] ] } ],
	braze => [ { api_keys => ['cs-secret-changed'] }, { api_keys => [$PASSCODE] } ]);

# one destination at a time from here on: every connected one gets the records
sub disconnect
{
	my ($name) = @_;
	my $f = sql("SELECT to_regproc('cohortsync.disconnect_destination') IS NOT NULL") eq 't'
	  ? 'disconnect_destination' : 'disconnect_clevertap';
	sql("SELECT cohortsync.$f('$name')");
}
disconnect($_) for split /\n/, sql("SELECT name FROM cohortsync.destinations");

my $n = 0;
for my $kind (@KINDS)
{
  SKIP:
	{
		skip "no connect function for $kind yet", 1
		  unless sql("SELECT to_regproc('cohortsync.connect_$kind') IS NOT NULL") eq 't';
		$n++;
		my $s = start_standin(kind => $kind);
		my $name = "d-$kind";
		sql(connect_sql($kind, $name, $s->{url}));

		# exact records, added and removed
		sql("SELECT page('add_members', 'x$n', ARRAY['x1', 'x2', 'x3'], 'c$n', 'Power users')");
		ok(outbox_empty($node, 30), "$kind: delivered");
		sql("SELECT page('remove_members', 'x$n', ARRAY['x2'], 'c$n', 'Power users')");
		ok(outbox_empty($node, 30), "$kind: a removal delivered");
		is_deeply(standin_tally($s),
			{ (map { expect_change($kind, $_, 1) } qw(x1 x2 x3)), expect_change($kind, 'x2', 0) },
			"$kind: exactly the expected records, each once");

		# batching: the destination's own batch_size
		standin_post($s, '/_reset');
		sql("UPDATE cohortsync.destinations SET batch_size = 20 WHERE name = '$name'");
		sql("SELECT page('add_members', 'b$n', (SELECT array_agg('b' || g) FROM generate_series(1, 200) g),
		                 'cb$n', 'Power users')");
		ok(outbox_empty($node, 60), "$kind: batching: delivered");
		my %size = %{ standin_requests($s) };
		cmp_ok((sort { $b <=> $a } values %size)[0], '<=', 20, "$kind: batching: no request over batch_size");
		cmp_ok(scalar(keys %size), '>=', 10, "$kind: batching: in many requests");
		is_deeply(standin_tally($s), { map { expect_change($kind, "b$_", 1) } 1 .. 200 },
			"$kind: batching: every record once");
		sql("UPDATE cohortsync.destinations SET batch_size = NULL WHERE name = '$name'");

		# partial answers: the refused record fails visibly, the rest is delivered
		standin_post($s, '/_reset');
		standin_post($s, '/_control', $refuse{$kind}[0]);
		sql("SELECT page('add_members', 'p$n', ARRAY['bad1', 'good1', 'good2'], 'cp$n', 'Power users')");
		ok(outbox_empty($node, 30), "$kind: partial: settled");
		is(sql("SELECT count(*) FROM cohortsync.failed_records WHERE destination = '$name'"),
			$refuse{$kind}[2], "$kind: partial: the refused record is in failed_records");
		is_deeply(standin_tally($s), { map { expect_change($kind, $_, 1) } qw(good1 good2) },
			"$kind: partial: the others are delivered, once");
		standin_post($s, '/_control', $refuse{$kind}[1]);
		sql("DELETE FROM cohortsync.failed_records");

		# 5xx and 429 with Retry-After: retried, the destination backs off, nothing is lost
		standin_post($s, '/_reset');
		standin_post($s, '/_control', { status_all => 429, ($kind eq 'clevertap' ? () : (retry_after => 4)) });
		sql("SELECT page('add_members', 'r$n', ARRAY['r1', 'r2'], 'cr$n', 'Power users')");
		ok(wait_until(10, sub {
			sql("SELECT consecutive_failures >= 1 FROM cohortsync.destination_status WHERE name = '$name'") eq 't' }),
			"$kind: 429: the destination backs off");
		is(sql("SELECT backoff_until > now() + interval '2 s' FROM cohortsync.destination_status WHERE name = '$name'"),
			't', "$kind: 429: honouring Retry-After (4 s, more than the first step of 1 s)")
		  if $kind ne 'clevertap';
		standin_post($s, '/_control', { status_all => undef, fail_next => 2, fail_status => 503 });
		ok(outbox_empty($node, 60), "$kind: retries: delivered in the end");
		is_deeply(standin_tally($s), { map { expect_change($kind, $_, 1) } qw(r1 r2) },
			"$kind: retries: each once");

		# bad credentials pause the destination; resume after the fix delivers
		standin_post($s, '/_reset');
		standin_post($s, '/_control', $creds{$kind}[0]);
		sql("SELECT page('add_members', 'c$n', ARRAY['c1'], 'cc$n', 'Power users')");
		ok(wait_until(20, sub {
			sql("SELECT state FROM cohortsync.destinations WHERE name = '$name'") eq 'paused' }),
			"$kind: bad credentials pause the destination");
		unlike(sql("SELECT coalesce(state_reason, '') || coalesce(last_error, '')
		              FROM cohortsync.destination_status WHERE name = '$name'"), qr/cs-secret/,
			"$kind: the reason shows no secret");
		standin_post($s, '/_control', $creds{$kind}[1]);
		sql("SELECT cohortsync.resume_destination('$name')");
		ok(outbox_empty($node, 30), "$kind: resumed, delivered");
		is_deeply(standin_tally($s), { expect_change($kind, 'c1', 1) }, "$kind: resumed: once");

		# per-identity order: an addition retried is not overtaken by the removal
		standin_post($s, '/_reset');
		standin_post($s, '/_control', { fail_next => 1, fail_status => 503 });
		sql("SELECT page('add_members', 'o$n', ARRAY['o1'], 'co$n', 'Power users')");
		sql("SELECT page('remove_members', 'o$n', ARRAY['o1'], 'co$n', 'Power users')");
		ok(outbox_empty($node, 30), "$kind: order: delivered");
		my $recs = delivered_records($s);
		my ($add, $remove) = (arrival($kind, $recs, 'o1', 1), arrival($kind, $recs, 'o1', 0));
		ok(defined $add && defined $remove && $add < $remove, "$kind: order: added before removed");

		disconnect($name);
	}
}

my ($ret, $out, $err) = $node->psql('postgres', "SELECT cohortsync.test_destination('nosuch')");
like($err, qr/destination "nosuch" does not exist/, 'an unknown destination is an error');

$node->stop;
done_testing();
