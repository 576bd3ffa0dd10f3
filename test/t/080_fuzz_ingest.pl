# Fuzzing cohortsync.ingest (issue #6): 100,000 mutations of the seed pages under
# test/fuzz/corpus (wrong types, missing and duplicate keys, huge and deeply nested
# values, bad escapes, numbers out of range, ids near their limits, pages of one
# cohort's sessions in any order), through one psql session.
#
# Every case must be accepted (the success body, echoing the action) or rejected
# (a failure body with code 400) and a rejected page must write nothing: each case
# runs in a transaction of its own, and a rejected one must not have been assigned
# a transaction id (any row or sequence write assigns one). Text that is not JSON
# never reaches ingest (the cast fails; that is counted, not an error). The backend
# must not crash, and the stored data must stay consistent.
#
# Deterministic: case n is generated from "<seed>:<n>". FUZZ_SEED and FUZZ_CASES
# change the seed and the number of cases; a failing case is saved and printed with
# the command that regenerates it.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $seed = $ENV{FUZZ_SEED} // 'cohortsync-ci';
my $cases = $ENV{FUZZ_CASES} // 100_000;
my $fuzz = "$ENV{CS_TOP}/test/fuzz/fuzz.py";

my $node = PostgreSQL::Test::Cluster->new('fuzz_ingest');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'cohortsync'
log_min_messages = warning
# the statements hold the cases: 100 MB in the log otherwise
log_statement = none
autovacuum_naptime = '5s'
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION cohortsync');
# a paused destination: every change also goes through the outbox triggers
$node->safe_psql('postgres',
	"SELECT cohortsync.connect_clevertap('fz', 'ACC', 'cs-secret-fuzz', 'eu1', 'http://127.0.0.1:9');"
	  . "SELECT cohortsync.pause_destination('fz', 'fuzzing')");
$node->safe_psql('postgres', slurp_file("$ENV{CS_TOP}/test/fuzz/fuzz_case.sql"));

my ($out, $err) = ('', '');
my $ok = IPC::Run::run(
	[ 'python3', $fuzz, 'sql', '--seed', $seed, '--cases', $cases ],
	'|',
	[
		'psql', '-X', '-At', '-v', 'ON_ERROR_STOP=1', '-h', $node->host, '-p', $node->port,
		'-d', 'postgres'
	],
	'>', \$out, '2>', \$err);

my ($accepted, $rejected, $invalid, $batches, $last_batch) = (0, 0, 0, 0, undef);
my (%invalid_by_state, @bad);
for my $line (split /\n/, $out)
{
	if ($line =~ /^batch (-?\d+): (\d+) (\d+) (\d+)$/)
	{
		$batches++;
		$last_batch = $1;
		$accepted += $2;
		$rejected += $3;
		$invalid += $4;
	}
	elsif ($line =~ /^(-?\d+)\|i\|(\w+)$/)
	{
		$invalid_by_state{$2}++;
		# the cast may fail for bad data (22xxx) or a program limit (54xxx: depth, size)
		push @bad, $line unless $2 =~ /^(22|54)/;
	}
	elsif ($line =~ /^-?\d+\|/)
	{
		push @bad, $line;
	}
}

diag(sprintf('fuzz ingest (seed %s): %d cases tried, %d accepted, %d rejected (400), '
	  . '%d not JSON (%s)',
	$seed, $accepted + $rejected + $invalid, $accepted, $rejected, $invalid,
	join(', ', map { "$_: $invalid_by_state{$_}" } sort keys %invalid_by_state)));

ok($ok, 'the whole run went through one psql session without losing it')
  or diag("psql: $err\nlast batch completed starts at case "
	  . ($last_batch // 'none')
	  . "; the culprit is in the next batch; replay with: python3 test/fuzz/fuzz.py case --mode sql --seed '$seed' --case N");
cmp_ok($accepted + $rejected + $invalid, '>=', $cases, "all $cases cases ran");
cmp_ok($accepted, '>', $cases / 10, 'a fair share of the cases is accepted');
cmp_ok($rejected, '>', $cases / 10, 'a fair share of the cases is rejected');

# every case that went wrong: saved, printed, with the command that makes it again
my $dir = "${PostgreSQL::Test::Utils::tmp_check}/fuzz_failures";
mkdir $dir;
for my $line (@bad[ 0 .. ($#bad < 9 ? $#bad : 9) ])
{
	my ($n) = $line =~ /^(-?\d+)/;
	my $file = "$dir/sql-case-$n.json";
	IPC::Run::run([ 'python3', $fuzz, 'case', '--mode', 'sql', '--seed', $seed, '--case', $n ],
		'>', $file, '2>', \my $e)
	  if $n >= 0;
	diag("case $n: " . substr($line, 0, 400) . ($n >= 0 ? "\n  saved as $file" : ''));
}
is(scalar(@bad), 0,
	'every case was accepted, rejected with a 400 writing nothing, or not JSON');

unlike(slurp_file($node->logfile), qr/terminated by signal|server process .* was terminated/,
	'no backend crashed');

# the data the accepted pages left behind is consistent, once the queued swaps are applied
$node->safe_psql('postgres', 'SELECT cohortsync.apply_pending()');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM cohortsync.cohorts c
	 WHERE member_count <> (SELECT count(*) FROM cohortsync.members m
	                         WHERE m.project_id = c.project_id AND m.cohort_id = c.cohort_id)}),
	'0', 'every cohort\'s member_count is its number of members');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM (
	  SELECT change, row_number() OVER (PARTITION BY project_id, cohort_id, distinct_id ORDER BY id) AS n
	    FROM cohortsync.membership_changes) c
	 WHERE (n % 2 = 1) <> (change = 'added')}),
	'0', 'per member, changes alternate added/removed, starting with added');
is( $node->safe_psql(
		'postgres', q{
	WITH last AS (
	  SELECT DISTINCT ON (project_id, cohort_id, distinct_id) project_id, cohort_id, distinct_id, change
	    FROM cohortsync.membership_changes ORDER BY project_id, cohort_id, distinct_id, id DESC)
	SELECT (SELECT count(*) FROM last l
	         WHERE (l.change = 'added') <> EXISTS (
	               SELECT FROM cohortsync.members m
	                WHERE (m.project_id, m.cohort_id, m.distinct_id) = (l.project_id, l.cohort_id, l.distinct_id)))
	     + (SELECT count(*) FROM cohortsync.members m
	         WHERE NOT EXISTS (SELECT FROM last l
	                WHERE (m.project_id, m.cohort_id, m.distinct_id) = (l.project_id, l.cohort_id, l.distinct_id)))}),
	'0', 'the members are exactly those whose last change is "added"');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM cohortsync.sync_sessions s
	 WHERE pages_received <> (SELECT count(*) FROM cohortsync.sync_pages p
	                           WHERE (p.project_id, p.cohort_id, p.session_id, p.action)
	                               = (s.project_id, s.cohort_id, s.session_id, s.action))}),
	'0', 'every session counts the pages it recorded');
is( $node->safe_psql(
		'postgres', q{
	SELECT count(*) FROM cohortsync.staged_members st
	 WHERE NOT EXISTS (SELECT FROM cohortsync.sync_sessions s
	                    WHERE (s.project_id, s.cohort_id, s.session_id, s.action, s.state)
	                        = (st.project_id, st.cohort_id, st.session_id, 'members', 'receiving'))}),
	'0', 'staged members belong to sessions still receiving');
cmp_ok($node->safe_psql('postgres', 'SELECT count(*) FROM cohortsync.outbox'),
	'>', 0, 'the accepted changes were queued for the destination');

$node->stop;
done_testing();
