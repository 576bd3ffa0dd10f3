# The install script of the current version (sql/cohortsync.sql) and the upgrade
# path (the frozen 0.1.0 script, then every cohortsync--<from>--<to>.sql) must build
# the same thing. Database "installed" gets CREATE EXTENSION cohortsync; database
# "upgraded" gets CREATE EXTENSION cohortsync VERSION '0.1.0' and ALTER EXTENSION
# cohortsync UPDATE. Compared, each as a unified diff that must be empty:
#
#   - the extension's member objects, and its version;
#   - the tables pg_dump keeps the data of (pg_extension.extconfig, extcondition);
#   - every function's definition (pg_get_functiondef) and privileges;
#   - privileges and comments of every member object (and of the columns), and the
#     initial privileges pg_dump takes as the extension's own (pg_init_privs);
#   - pg_dump --schema-only of the schema. pg_dump leaves the objects of an extension
#     out, so the objects are first made ordinary ones in both databases (their
#     membership rows in pg_depend and pg_init_privs deleted): the dump then shows
#     every table with its columns in order, constraints, indexes, functions,
#     views, triggers, comments and grants exactly as PostgreSQL sees them.
use strict;
use warnings;

use File::Spec;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('install_upgrade');
$node->init;
$node->start;
# the compared texts are kept next to the server's log
my $dir = $PostgreSQL::Test::Utils::log_path;

$node->safe_psql('postgres', 'CREATE DATABASE installed');
$node->safe_psql('postgres', 'CREATE DATABASE upgraded');
$node->safe_psql('installed', 'CREATE EXTENSION cohortsync');
$node->safe_psql('upgraded', "CREATE EXTENSION cohortsync VERSION '0.1.0'");
$node->safe_psql('upgraded', 'ALTER EXTENSION cohortsync UPDATE');

my $default = $node->safe_psql('postgres',
	"SELECT default_version FROM pg_available_extensions WHERE name = 'cohortsync'");
for my $db ('installed', 'upgraded') {
	is($node->safe_psql($db, "SELECT extversion FROM pg_extension WHERE extname = 'cohortsync'"),
		$default, "$db: at the default version, $default");
}

# Write both texts to files and diff them: the diff is what a failure shows.
sub same {
	my ($name, $installed, $upgraded) = @_;
	(my $file = "005_$name") =~ s/[^a-z0-9]+/_/gi;
	my $a = File::Spec->catfile($dir, "$file.installed");
	my $b = File::Spec->catfile($dir, "$file.upgraded");
	PostgreSQL::Test::Utils::append_to_file($a, "$installed\n");
	PostgreSQL::Test::Utils::append_to_file($b, "$upgraded\n");
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'diff', '-u', $a, $b ], '>', \$out, '2>', \$err);
	is($out . $err, '', "$name: the same installed and upgraded");
	return;
}

sub compare {
	my ($name, $query) = @_;
	my ($i, $u) = map { $node->safe_psql($_, $query) } ('installed', 'upgraded');
	isnt($i, '', "$name: the query finds something");
	same($name, $i, $u);
	return;
}

my $ext = "(SELECT oid FROM pg_extension WHERE extname = 'cohortsync')";
my $members = "SELECT d.classid, d.objid, d.objsubid FROM pg_depend d
	WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = $ext AND d.deptype = 'e'";

compare('member objects', "SELECT pg_describe_object(m.classid, m.objid, m.objsubid)
	FROM ($members) m ORDER BY 1");

compare('tables dumped with their data (extconfig)', "SELECT x.c::regclass::text || ' WHERE ' || quote_literal(x.cond)
	FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS x(c, cond)
	WHERE e.extname = 'cohortsync' ORDER BY 1");

compare('function definitions', "SELECT pg_get_functiondef(p.oid) || E'\\nACL ' || coalesce(p.proacl::text, 'default')
	FROM pg_proc p WHERE p.pronamespace = 'cohortsync'::regnamespace
	ORDER BY p.oid::regprocedure::text");

compare('privileges and comments',
	"SELECT pg_describe_object(m.classid, m.objid, m.objsubid)
	        || ' ACL ' || coalesce(CASE m.classid
	             WHEN 'pg_class'::regclass THEN (SELECT c.relacl::text FROM pg_class c WHERE c.oid = m.objid)
	             WHEN 'pg_proc'::regclass THEN (SELECT p.proacl::text FROM pg_proc p WHERE p.oid = m.objid)
	             WHEN 'pg_namespace'::regclass THEN (SELECT n.nspacl::text FROM pg_namespace n WHERE n.oid = m.objid)
	           END, 'default')
	        || ' COMMENT ' || coalesce(quote_literal(obj_description(m.objid, m.classid::regclass::name)), 'none')
	   FROM ($members) m
	 UNION ALL
	 SELECT 'column ' || a.attrelid::regclass || '.' || a.attname
	        || ' ACL ' || coalesce(a.attacl::text, 'default')
	        || ' COMMENT ' || coalesce(quote_literal(col_description(a.attrelid, a.attnum)), 'none')
	   FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
	  WHERE c.relnamespace = 'cohortsync'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
	  ORDER BY 1");

compare('initial privileges (pg_init_privs)', "SELECT pg_describe_object(i.classoid, i.objoid, i.objsubid)
	        || ' ' || i.privtype::text || ' ' || i.initprivs::text
	   FROM pg_init_privs i JOIN ($members) m ON m.classid = i.classoid AND m.objid = i.objoid
	  ORDER BY 1");

# pg_dump of the schema, its objects made ordinary ones first.
my %dump;
for my $db ('installed', 'upgraded') {
	$node->safe_psql($db, "
		DELETE FROM pg_init_privs i USING ($members) m
		 WHERE i.classoid = m.classid AND i.objoid = m.objid;
		DELETE FROM pg_depend d
		 WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = $ext AND d.deptype = 'e';");
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'pg_dump', '--schema-only', '--schema=cohortsync', '-d', $node->connstr($db) ],
		'>', \$out, '2>', \$err)
	  or die "pg_dump $db failed: $err";
	# pg_dump 17.6 and later fence the script with a random key (\restrict, \unrestrict)
	$out =~ s/^\\(un)?restrict .*$//mg;
	$dump{$db} = $out;
}
like($dump{installed}, qr/CREATE TABLE cohortsync\.members/, 'pg_dump: the dump holds the objects');
same('pg_dump --schema-only', $dump{installed}, $dump{upgraded});

done_testing();
