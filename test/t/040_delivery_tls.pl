# TLS: certificates are verified; cohortsync.ca_file makes a private CA trusted.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CsDelivery;

my $dir = PostgreSQL::Test::Utils::tempdir();
system_or_bail('openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1',
	'-keyout', "$dir/key.pem", '-out', "$dir/cert.pem", '-subj', '/CN=127.0.0.1',
	'-addext', 'subjectAltName=IP:127.0.0.1');
my $ct = start_standin(args => [ '--tls-cert', "$dir/cert.pem", '--tls-key', "$dir/key.pem" ]);
like($ct->{url}, qr{^https://}, 'the stand-in speaks https');

my $node = new_delivery_node('tls', $ct);
$node->safe_psql('postgres', "SELECT page('add_members', 't', ARRAY['t1'], '41', 'TLS')");
ok(wait_until(20, sub {
	$node->safe_psql('postgres', "SELECT coalesce(last_error, '') FROM cohortsync.destination_status")
	  =~ /SSL|certificate/i }),
	'a certificate the system does not trust is refused');
is(scalar(@{ delivered_records($ct) }), 0, 'nothing was sent');

$node->safe_psql('postgres', "ALTER SYSTEM SET cohortsync.ca_file = '$dir/cert.pem'");
$node->safe_psql('postgres', "SELECT pg_reload_conf()");
$node->safe_psql('postgres', "SELECT cohortsync.resume_destination('ct')");   # retry now
ok(outbox_empty($node, 30), 'with cohortsync.ca_file it is trusted, and delivery goes through');
is(scalar(@{ delivered_records($ct) }), 2, 'both records arrive');

$node->stop;
done_testing();
