# A destination connected after its members existed converges with
# resync_destination: the worker delivers the current membership, as the
# idempotent profile records ($add and the fields), and nothing else.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CsDelivery;

my $ct = start_standin();
my $node = new_delivery_node('resync', undef);
sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{SELECT page('add_members', 's1', ARRAY['A', 'B', 'C']);
    SELECT page('remove_members', 's1', ARRAY['B']);
    SELECT page('add_members', 's2', ARRAY['A'], '77', 'Churn risk');});
is(sql('SELECT count(*) FROM cohortsync.outbox'), '0', 'no destination: nothing queued');

sql("SELECT cohortsync.connect_clevertap('late', 'ACC', '$CsDelivery::PASSCODE', 'eu1', '$ct->{url}')");
is(sql("SELECT cohortsync.resync_destination('late')"), '3', 'resync: one record per current membership');
ok(outbox_empty($node, 30), 'resync: delivered');

my @got = sort map { "$_->{identity} $_->{type} " . join(',', @{ $_->{profileData}{'Mixpanel Cohorts'}{'$add'} }) }
	@{ delivered_records($ct) };
is_deeply(\@got, [ 'ct-A profile Churn risk', 'ct-A profile Power users', 'ct-C profile Power users' ],
	'resync: the current members, as $add profile records, no events');
my ($a) = grep { $_->{identity} eq 'ct-A' && $_->{profileData}{'Mixpanel Cohorts'}{'$add'}[0] eq 'Power users' }
	@{ delivered_records($ct) };
is_deeply([ @{ $a->{profileData} }{qw(Email Name)} ], [ 'a@example.com', 'A Doe' ],
	'resync: with the member\'s fields');

# again: the same records, which CleverTap takes as no change
standin_post($ct, '/_reset');
is(sql("SELECT cohortsync.resync_destination('late', cohort_id => '77')"), '1', 'resync of one cohort');
ok(outbox_empty($node, 30), 'resync of one cohort: delivered');
is(scalar(@{ delivered_records($ct) }), 1, 'resync of one cohort: one record');

stop_standin($ct);
$node->stop;
done_testing();
