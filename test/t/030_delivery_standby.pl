# A streaming standby sends nothing; once promoted, it delivers.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use CsDelivery;

my $ct = start_standin();
# The primary's worker watches "postgres", where the extension is not: the
# primary sends nothing. The standby is told to watch "csdb", which holds the
# extension, the destination and the queued records, so it would send if it could.
my $primary = new_delivery_node('primary', $ct, dbname => 'csdb', init => { allows_streaming => 1 });
$primary->backup('b1');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b1', has_streaming => 1);
$standby->append_conf('postgresql.conf', "cohortsync.database = 'csdb'\n");
$standby->start;

$primary->safe_psql('csdb', "SELECT page('add_members', 'sb', ARRAY['x1', 'x2', 'x3'], '31', 'Standby')");
$primary->wait_for_catchup($standby);
is($standby->safe_psql('csdb', 'SELECT count(*) FROM cohortsync.outbox'), '6',
	'the standby has the queued records');
sleep 3;
is($standby->safe_psql('postgres',
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'cohortsync delivery'"), '0',
	'no delivery worker runs on the standby');
is(standin_get($ct, '/_stats')->{requests}, 0, 'the standby sent nothing');

my @waiting = slurp_file($primary->logfile) =~
  /extension "cohortsync" is not installed in database "postgres"; waiting/g;
is(scalar(@waiting), 1, 'where the extension is not installed, the worker waits quietly (one log line)');

$standby->promote;
ok(wait_until(30, sub {
	$standby->safe_psql('csdb', 'SELECT count(*) FROM cohortsync.outbox') eq '0' }),
	'once promoted, it delivers');
is(scalar(@{ delivered_records($ct) }), 6, 'all six records');

$standby->stop;
$primary->stop;
done_testing();
