# TLS to CleverTap is verified by default and fails closed: a stand-in on HTTPS
# with a certificate nobody configured as trusted never receives a request (so
# never sees the passcode); cohortsync.ca_file trusts its CA and delivery goes
# through; a trusted certificate for another host name is still refused.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CsDelivery;

my $dir = PostgreSQL::Test::Utils::tempdir();
# A private CA, and a server certificate it signed for 127.0.0.1 only (no DNS name).
system_or_bail('openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1',
	'-keyout', "$dir/ca.key", '-out', "$dir/ca.pem", '-subj', '/CN=cohortsync test CA',
	'-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign');
system_or_bail('openssl', 'req', '-newkey', 'rsa:2048', '-nodes',
	'-keyout', "$dir/key.pem", '-out', "$dir/server.csr", '-subj', '/CN=127.0.0.1');
open my $ext, '>', "$dir/server.ext" or die $!;
print $ext "subjectAltName=IP:127.0.0.1\n";
close $ext;
system_or_bail('openssl', 'x509', '-req', '-in', "$dir/server.csr", '-CA', "$dir/ca.pem",
	'-CAkey', "$dir/ca.key", '-CAcreateserial', '-days', '1', '-extfile', "$dir/server.ext",
	'-out', "$dir/cert.pem");
my $ct = start_standin(args => [ '--tls-cert', "$dir/cert.pem", '--tls-key', "$dir/key.pem" ]);
like($ct->{url}, qr{^https://}, 'the stand-in speaks https');

my $node = new_delivery_node('tls', $ct);
sub sql { return $node->safe_psql('postgres', $_[0]); }

#------------------------------------------------------------------------------
# Not trusted (cohortsync.ca_file unset: the system's CAs only): fails closed.
#------------------------------------------------------------------------------
is(sql("SHOW cohortsync.ca_file"), '', 'by default only the system CAs are trusted');
sql("SELECT page('add_members', 't', ARRAY['t1'], '41', 'TLS')");
ok(wait_until(20, sub {
	sql("SELECT coalesce(last_error, '') FROM cohortsync.destination_status") =~ /SSL|certificate/i }),
	'a certificate the system does not trust is refused');
like(sql("SELECT last_error FROM cohortsync.destination_status"), qr/certificate/i,
	'and the error says it is the certificate');
is(standin_get($ct, '/_stats')->{requests}, 0,
	'no request reached the stand-in: the passcode never went out');
is(sql("SELECT state || ' ' || pending FROM cohortsync.destination_status"), 'active 2',
	'the records are kept for a retry, the destination is not paused');

#------------------------------------------------------------------------------
# Its CA configured: trusted, delivered.
#------------------------------------------------------------------------------
sql("ALTER SYSTEM SET cohortsync.ca_file = '$dir/ca.pem'");
sql("SELECT pg_reload_conf()");
sql("SELECT cohortsync.resume_destination('ct')");   # retry now
ok(outbox_empty($node, 30), 'with cohortsync.ca_file it is trusted, and delivery goes through');
is(scalar(@{ delivered_records($ct) }), 2, 'both records arrive');

#------------------------------------------------------------------------------
# Trusted CA, wrong host name: still refused (the name is checked, not only the chain).
#------------------------------------------------------------------------------
my $requests = standin_get($ct, '/_stats')->{requests};
(my $by_name = $ct->{url}) =~ s/127\.0\.0\.1/localhost/;
sql("SELECT cohortsync.connect_clevertap('byname', 'ACC', '$PASSCODE', 'eu1', '$by_name')");
sql("SELECT page('add_members', 't2', ARRAY['t2'], '41', 'TLS')");
ok(wait_until(20, sub {
	sql("SELECT coalesce(last_error, '') FROM cohortsync.destination_status WHERE name = 'byname'")
	  =~ /host ?name|subject name/i }),
	'a trusted certificate for another host name is refused');
note 'the error: ', sql("SELECT last_error FROM cohortsync.destination_status WHERE name = 'byname'");
ok(outbox_empty_of($node, 'ct'), 'the other destination is delivered meanwhile');
is(standin_get($ct, '/_stats')->{requests} - $requests, 1,
	'only its request reached the stand-in');
is(sql("SELECT pending FROM cohortsync.destination_status WHERE name = 'byname'"), '2',
	'the refused destination keeps its records');

$node->stop;
done_testing();

sub outbox_empty_of
{
	my ($node, $dest) = @_;
	return wait_until(30, sub {
		$node->safe_psql('postgres',
			"SELECT count(*) FROM cohortsync.outbox WHERE destination = '$dest'") eq '0' });
}
