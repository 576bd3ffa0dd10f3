/*-------------------------------------------------------------------------
 *
 * membership.c
 *	  Write a validated webhook page into the membership tables with SPI.
 *
 * All set work is done by SQL statements over whole pages (arrays bound as
 * parameters and unnested), never by loops over rows in C: a page is at most
 * a thousand members, but a full sync replaces a cohort of up to ten million,
 * and only set-based statements keep that bounded in memory and time. The
 * exceptions are a page of new members and a staged page of a full sync, at
 * most a thousand rows each, which are written as COPY writes (bulk_insert.c,
 * see add_new_members and stage_page).
 *
 * Concurrency: the first statement for every page upserts the cohort's row in
 * cohortsync.cohorts, which locks it until the end of the transaction. Pages
 * of the same cohort are therefore applied one after the other, so the
 * "is this user already a member?" tests below cannot race; pages of
 * different cohorts proceed in parallel.
 *
 * Full syncs are applied in the background (see apply_queue.c): the page that
 * completes one queues its swap in cohortsync.apply_queue, and while a cohort
 * has anything queued its diff pages are queued behind it. The applier then
 * calls cs_apply_queued() for each entry, in order, with the same statements.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "lib/stringinfo.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/resowner.h"

#include "apply.h"
#include "bulk_insert.h"
#include "change_origin.h"
#include "membership.h"
#include "worker_db.h"

/*
 * A statement run once per page: planned once per backend and kept. Plans
 * kept with SPI_keepplan are revalidated by the plan cache when the tables
 * change, DROP/CREATE EXTENSION included.
 */
typedef struct CsStatement
{
	const char *sql;
	int			nargs;
	Oid			argtypes[10];
	SPIPlanPtr	plan;
} CsStatement;

/* Parameters shared by the statements: $1 project, $2 cohort, $3 session. */
#define COHORT_KEY "project_id = $1 AND cohort_id = $2"

static CsStatement upsert_cohort = {
	"INSERT INTO cohortsync.cohorts AS c"
	"  (project_id, cohort_id, name, description, last_session_id, last_sync_at)"
	" VALUES ($1, $2, $4, $5, $3, now())"
	" ON CONFLICT (project_id, cohort_id) DO UPDATE"
	" SET name = coalesce(EXCLUDED.name, c.name),"
	"     description = coalesce(EXCLUDED.description, c.description),"
	"     last_session_id = EXCLUDED.last_session_id,"
	"     last_sync_at = EXCLUDED.last_sync_at",
	5, {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID}, NULL
};

static CsStatement get_session = {
	"SELECT state, total_pages FROM cohortsync.sync_sessions"
	" WHERE " COHORT_KEY " AND session_id = $3 AND action = $4",
	4, {TEXTOID, TEXTOID, TEXTOID, TEXTOID}, NULL
};

static CsStatement insert_session = {
	"INSERT INTO cohortsync.sync_sessions (project_id, cohort_id, session_id, action, total_pages)"
	" VALUES ($1, $2, $3, $4, $5)",
	5, {TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID}, NULL
};

/*
 * A new full sync supersedes any unfinished one of the same cohort: Mixpanel
 * restarts an export from the top after a failure, under a new session.
 */
static CsStatement supersede_sessions = {
	"WITH stale AS ("
	"  UPDATE cohortsync.sync_sessions SET state = 'superseded', superseded_at = now()"
	"   WHERE " COHORT_KEY " AND action = 'members' AND state = 'receiving' AND session_id <> $3"
	"  RETURNING session_id)"
	" DELETE FROM cohortsync.staged_members s USING stale"
	"  WHERE s.project_id = $1 AND s.cohort_id = $2 AND s.session_id = stale.session_id",
	3, {TEXTOID, TEXTOID, TEXTOID}, NULL
};

/*
 * A session whose total_pages changed was restarted by the sender with another
 * snapshot of the cohort: forget the pages of the old one.
 */
static CsStatement restart_session = {
	"WITH forget_pages AS ("
	"  DELETE FROM cohortsync.sync_pages"
	"   WHERE " COHORT_KEY " AND session_id = $3 AND action = $4),"
	" forget_staged AS ("
	"  DELETE FROM cohortsync.staged_members"
	"   WHERE " COHORT_KEY " AND session_id = $3 AND $4 = 'members')"
	" UPDATE cohortsync.sync_sessions"
	"   SET total_pages = $5, pages_received = 0, restarts = restarts + 1, state = 'receiving'"
	" WHERE " COHORT_KEY " AND session_id = $3 AND action = $4",
	5, {TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID}, NULL
};

static CsStatement insert_page = {
	"INSERT INTO cohortsync.sync_pages"
	"  (project_id, cohort_id, session_id, action, page_count, member_count)"
	" VALUES ($1, $2, $3, $4, $5, $6)"
	" ON CONFLICT DO NOTHING",
	6, {TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID, INT4OID}, NULL
};

static CsStatement repeat_page = {
	"UPDATE cohortsync.sync_pages"
	"   SET times_received = times_received + 1, last_received_at = now()"
	" WHERE " COHORT_KEY " AND session_id = $3 AND action = $4 AND page_count = $5",
	5, {TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID}, NULL
};

/* Returns whether the session has now received all its pages. */
static CsStatement count_page = {
	"UPDATE cohortsync.sync_sessions"
	"   SET pages_received = pages_received + $5::int, last_page_at = now()"
	" WHERE " COHORT_KEY " AND session_id = $3 AND action = $4"
	" RETURNING pages_received >= total_pages",
	5, {TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID}, NULL
};

static CsStatement finish_session = {
	"UPDATE cohortsync.sync_sessions"
	"   SET members_added = members_added + $5, members_removed = members_removed + $6,"
	"       state = CASE WHEN $7 THEN 'completed' ELSE state END,"
	"       completed_at = CASE WHEN $7 THEN now() ELSE completed_at END"
	" WHERE " COHORT_KEY " AND session_id = $3 AND action = $4",
	7, {TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT8OID, INT8OID, BOOLOID}, NULL
};

static CsStatement count_members_stmt = {
	"UPDATE cohortsync.cohorts"
	"   SET member_count = member_count + $3 - $4, last_changed_at = now()"
	" WHERE " COHORT_KEY,
	4, {TEXTOID, TEXTOID, INT8OID, INT8OID}, NULL
};

/* The page as a relation: $4..$9 are the arrays built by page.c. */
#define PAGE_ROWS \
	"unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::jsonb[])" \
	" AS p(distinct_id, email, phone, first_name, last_name, properties)"
#define PAGE_ARGTYPES \
	TEXTOID, TEXTOID, TEXTOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, \
	TEXTARRAYOID, TEXTARRAYOID, JSONBARRAYOID
/* The same columns for cs_bulk_insert (see insert_new_members, stage_page). */
#define PAGE_MEMBER_COLUMNS(values) \
	{"distinct_id", TEXTOID, true, (values)[3], false}, \
	{"email", TEXTOID, true, (values)[4], false}, \
	{"phone", TEXTOID, true, (values)[5], false}, \
	{"first_name", TEXTOID, true, (values)[6], false}, \
	{"last_name", TEXTOID, true, (values)[7], false}, \
	{"properties", JSONBOID, true, (values)[8], false}

/* Stored fields differ from the sent ones: refresh them. */
#define FIELDS_DIFFER(m, s) \
	"(" m ".email, " m ".phone, " m ".first_name, " m ".last_name, " m ".properties)" \
	" IS DISTINCT FROM (" s ".email, " s ".phone, " s ".first_name, " s ".last_name, " s ".properties)"
#define REFRESH_FROM(s) \
	"email = " s ".email, phone = " s ".phone, first_name = " s ".first_name," \
	" last_name = " s ".last_name, properties = " s ".properties, updated_at = now()"

/*
 * add_members: insert who is new (recording an 'added' change), refresh who
 * is already there and differs; for a page of which some member is stored
 * (insert_members, below, takes the others). The stored membership is probed
 * once per member: the page is left-joined to it (one primary-key lookup each), and
 * both writes work from that one answer. Who was found is refreshed through
 * the row's ctid, a direct heap fetch; who was not is inserted. Before, a
 * refresh UPDATE and a NOT EXISTS insert each probed the index for every
 * member, and index descents over three text columns were a quarter of the
 * page's cost.
 *
 * The ctid is stable here: every page of the cohort first locks the
 * cohort's row (see top of file), so nothing else of cohortsync moves the
 * member between the probe and the update; all three parts see one snapshot.
 */
static CsStatement add_members = {
	"WITH page AS ("
	"  SELECT p.*, m.ctid AS stored,"
	"         m.ctid IS NOT NULL AND " FIELDS_DIFFER("m", "p") " AS stale"
	"    FROM " PAGE_ROWS
	"    LEFT JOIN cohortsync.members m"
	"      ON m.project_id = $1 AND m.cohort_id = $2 AND m.distinct_id = p.distinct_id),"
	" refreshed AS ("
	"  UPDATE cohortsync.members m SET " REFRESH_FROM("p")
	"    FROM page p"
	"   WHERE m.ctid = p.stored AND p.stale),"
	" joined AS ("
	"  INSERT INTO cohortsync.members"
	"    (project_id, cohort_id, distinct_id, email, phone, first_name, last_name, properties)"
	"  SELECT $1, $2, p.distinct_id, p.email, p.phone, p.first_name, p.last_name, p.properties"
	"    FROM page p WHERE p.stored IS NULL"
	"  RETURNING distinct_id, properties)"
	" INSERT INTO cohortsync.membership_changes"
	"   (project_id, cohort_id, distinct_id, change, session_id, properties)"
	" SELECT $1, $2, distinct_id, 'added', $3, properties FROM joined",
	9, {PAGE_ARGTYPES}, NULL
};

/*
 * add_members when none of the page's members is stored yet, the usual case
 * (Mixpanel sends who entered the cohort since its last sync): the members
 * are inserted and their history recorded from the page's arrays, without the
 * probe above. The primary key's unique check, which every insert makes
 * anyway, tells whether the guess was right: if one member was stored already,
 * the insert fails with a unique violation, its subtransaction is rolled back,
 * and the page goes through add_members instead (see add_new_members).
 *
 * Two statements rather than one with RETURNING: every member inserted is
 * recorded, so the history is read from the arrays, in the same order as the
 * members were inserted, and nothing is kept in between.
 */
static CsStatement insert_members = {
	"INSERT INTO cohortsync.members"
	"  (project_id, cohort_id, distinct_id, email, phone, first_name, last_name, properties)"
	" SELECT $1, $2, p.* FROM " PAGE_ROWS,
	9, {PAGE_ARGTYPES}, NULL
};

static CsStatement record_added = {
	"INSERT INTO cohortsync.membership_changes"
	"   (project_id, cohort_id, distinct_id, change, session_id, properties)"
	" SELECT $1, $2, p.distinct_id, 'added', $3, p.properties"
	"   FROM unnest($4::text[], $9::jsonb[]) AS p(distinct_id, properties)",
	9, {PAGE_ARGTYPES}, NULL
};

/* remove_members: remove who is there, recording a 'removed' change. */
static CsStatement remove_members = {
	"WITH gone AS ("
	"  DELETE FROM cohortsync.members m USING unnest($4::text[]) AS p(distinct_id)"
	"   WHERE m.project_id = $1 AND m.cohort_id = $2 AND m.distinct_id = p.distinct_id"
	"  RETURNING m.distinct_id, m.properties)"
	" INSERT INTO cohortsync.membership_changes"
	"   (project_id, cohort_id, distinct_id, change, session_id, properties)"
	" SELECT $1, $2, distinct_id, 'removed', $3, properties FROM gone",
	4, {TEXTOID, TEXTOID, TEXTOID, TEXTARRAYOID}, NULL
};

/*
 * A page of a full sync waits in staged_members until the session is complete.
 * A plain INSERT: staging has no unique key over members (see the 0.2.0
 * upgrade script); a page that arrives again first drops what it staged
 * before (unstage_page), and the swap counts a member sent in two pages once.
 * stage_page writes the same rows as COPY writes them; this statement remains
 * for a table a user changed.
 */
static CsStatement stage_members = {
	"INSERT INTO cohortsync.staged_members"
	"  (project_id, cohort_id, session_id, page_count, distinct_id, email, phone,"
	"   first_name, last_name, properties)"
	" SELECT $1, $2, $3, $10, p.* FROM " PAGE_ROWS,
	10, {PAGE_ARGTYPES, INT4OID}, NULL
};

static CsStatement unstage_page = {
	"DELETE FROM cohortsync.staged_members"
	" WHERE " COHORT_KEY " AND session_id = $3 AND page_count = $4",
	4, {TEXTOID, TEXTOID, TEXTOID, INT4OID}, NULL
};

/*
 * The full-sync swap: one statement over the staged session and the stored
 * membership (churn_statement, or first_fill_sorted_statement for an empty
 * cohort); staging in the 0.1.0 layout still takes the three statements of
 * swap_statements. They are not kept as prepared plans: they run once per
 * full sync, and planning them with the actual ids is worth it.
 */
#define STAGED_SESSION "s.project_id = $1 AND s.cohort_id = $2 AND s.session_id = $3"

/* Insert staged members (those meeting the extra condition), recording them as added. */
#define INSERT_STAGED(condition) \
	"WITH joined AS (" \
	"  INSERT INTO cohortsync.members" \
	"    (project_id, cohort_id, distinct_id, email, phone, first_name, last_name, properties)" \
	"  SELECT s.project_id, s.cohort_id, s.distinct_id, s.email, s.phone, s.first_name," \
	"         s.last_name, s.properties" \
	"    FROM cohortsync.staged_members s" \
	"   WHERE " STAGED_SESSION condition \
	"  RETURNING distinct_id, properties)" \
	" INSERT INTO cohortsync.membership_changes" \
	"   (project_id, cohort_id, distinct_id, change, session_id, properties)" \
	" SELECT $1, $2, distinct_id, 'added', $3, properties FROM joined"

static const char *const swap_statements[] = {
	/* who is stored but not in the new snapshot leaves */
	"WITH gone AS ("
	"  DELETE FROM cohortsync.members m"
	"   WHERE m.project_id = $1 AND m.cohort_id = $2"
	"     AND NOT EXISTS (SELECT FROM cohortsync.staged_members s"
	"                      WHERE " STAGED_SESSION " AND s.distinct_id = m.distinct_id)"
	"  RETURNING m.distinct_id, m.properties)"
	" INSERT INTO cohortsync.membership_changes"
	"   (project_id, cohort_id, distinct_id, change, session_id, properties)"
	" SELECT $1, $2, distinct_id, 'removed', $3, properties FROM gone",

	/* who is in the snapshot but not stored joins */
	INSERT_STAGED("     AND NOT EXISTS (SELECT FROM cohortsync.members m"
				  "                      WHERE m.project_id = $1 AND m.cohort_id = $2"
				  "                        AND m.distinct_id = s.distinct_id)"),

	/* who stays gets the fields of the snapshot; no change is recorded */
	"UPDATE cohortsync.members m SET " REFRESH_FROM("s")
	"  FROM cohortsync.staged_members s"
	" WHERE " STAGED_SESSION
	"   AND m.project_id = $1 AND m.cohort_id = $2 AND m.distinct_id = s.distinct_id"
	"   AND " FIELDS_DIFFER("m", "s"),
};

/*
 * The first full sync of a cohort (or one after it emptied) has nobody to remove and
 * nobody to refresh: the staged snapshot is inserted as it is. This is the common
 * case for big cohorts, and it skips two joins over the whole snapshot.
 */
static const char *const first_fill_statement = INSERT_STAGED("");

/*
 * The staged session, one row per member, in distinct_id order: a member sent
 * in two pages counts from the higher page (rows staged by 0.1.0 have no page
 * and are unique already). The sort that orders the session also drops the
 * lower copies, so the swap needs no separate pass (it used to delete them with
 * a hash semi join of the session with itself, 2-5 s at 1M). Only for the 0.2.0
 * layout of staged_members (page_count).
 */
#define STAGED_SORTED(cols) \
	"SELECT DISTINCT ON (s.distinct_id) " cols \
	"  FROM cohortsync.staged_members s" \
	" WHERE " STAGED_SESSION \
	" ORDER BY s.distinct_id, s.page_count DESC NULLS LAST"

/*
 * The first fill, from the sorted session: the members' primary key is then
 * filled in key order, at its right edge, instead of at random leaves.
 */
static const char *const first_fill_sorted_statement =
	"WITH joined AS ("
	"  INSERT INTO cohortsync.members"
	"    (project_id, cohort_id, distinct_id, email, phone, first_name, last_name, properties)"
	"  SELECT $1, $2, s.distinct_id, s.email, s.phone, s.first_name, s.last_name, s.properties"
	"    FROM (" STAGED_SORTED("s.distinct_id, s.email, s.phone, s.first_name, s.last_name, s.properties") ") s"
	"  RETURNING distinct_id, properties)"
	" INSERT INTO cohortsync.membership_changes"
	"   (project_id, cohort_id, distinct_id, change, session_id, properties)"
	" SELECT $1, $2, distinct_id, 'added', $3, properties FROM joined";

/*
 * Any later full sync: one pass computes the difference, then only the changed
 * members are written. The sorted session and the stored members of the cohort
 * (read in distinct_id order, or sorted) meet in one merge full join; a row
 * missing on one side is a member who joined or left, a row on both sides whose
 * fields differ is a member to refresh, and everyone else (with 1% churn, 98% of
 * the cohort) is dropped right there. Only those rows are kept (the diff CTE),
 * and the writes reach the stored rows by their ctid, through a TID scan of an
 * array of them: no second join against the whole cohort, and a plan that no
 * statistic can turn into a nested loop (a full join is a merge or hash join by
 * construction). The ctids are stable: nothing else writes the cohort's members
 * while its swap runs (its diff pages queue behind it, see apply_queue.c), and
 * all parts of the statement see one snapshot.
 *
 * Before (the statements of swap_statements below, still used for staging in
 * the 0.1.0 layout), three statements each joined the whole session with the
 * whole cohort, and a dedup pass a fourth time.
 *
 * The history rows of who left come first, then those of who joined, as before;
 * the statement returns both counts.
 */
static const char *const churn_statement =
	"WITH diff AS MATERIALIZED ("
	"  SELECT m.stored, s.distinct_id, s.email, s.phone, s.first_name, s.last_name, s.properties"
	"    FROM (SELECT m.ctid AS stored, m.distinct_id, m.email, m.phone, m.first_name,"
	"                 m.last_name, m.properties"
	"            FROM cohortsync.members m"
	"           WHERE m.project_id = $1 AND m.cohort_id = $2) m"
	"    FULL JOIN (" STAGED_SORTED("s.distinct_id, s.email, s.phone, s.first_name, s.last_name, s.properties") ") s"
	"      ON s.distinct_id = m.distinct_id"
	"   WHERE m.stored IS NULL OR s.distinct_id IS NULL OR " FIELDS_DIFFER("m", "s") "),"
	" gone AS ("
	"  DELETE FROM cohortsync.members m"
	"   WHERE m.ctid = ANY (ARRAY(SELECT d.stored FROM diff d WHERE d.distinct_id IS NULL))"
	"     AND m.project_id = $1 AND m.cohort_id = $2"
	"  RETURNING m.distinct_id, m.properties),"
	" joined AS ("
	"  INSERT INTO cohortsync.members"
	"    (project_id, cohort_id, distinct_id, email, phone, first_name, last_name, properties)"
	"  SELECT $1, $2, d.distinct_id, d.email, d.phone, d.first_name, d.last_name, d.properties"
	"    FROM diff d WHERE d.stored IS NULL"
	"  RETURNING distinct_id, properties),"
	" refreshed AS ("
	"  UPDATE cohortsync.members m SET " REFRESH_FROM("d")
	"    FROM diff d"
	"   WHERE m.ctid = ANY (ARRAY(SELECT r.stored FROM diff r"
	"                              WHERE r.stored IS NOT NULL AND r.distinct_id IS NOT NULL))"
	"     AND m.ctid = d.stored AND m.project_id = $1 AND m.cohort_id = $2),"
	" recorded AS ("
	"  INSERT INTO cohortsync.membership_changes"
	"    (project_id, cohort_id, distinct_id, change, session_id, properties)"
	"  SELECT $1, $2, distinct_id, 'removed', $3, properties FROM gone"
	"  UNION ALL"
	"  SELECT $1, $2, distinct_id, 'added', $3, properties FROM joined)"
	" SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM joined)";

/*
 * Staging as 0.1.0 did it, for a library newer than the schema (the server runs
 * this library before ALTER EXTENSION cohortsync UPDATE has been run).
 */
static CsStatement stage_members_v1 = {
	"INSERT INTO cohortsync.staged_members AS s"
	"  (project_id, cohort_id, session_id, distinct_id, email, phone, first_name, last_name, properties)"
	" SELECT $1, $2, $3, p.* FROM " PAGE_ROWS
	" ON CONFLICT (project_id, cohort_id, session_id, distinct_id) DO UPDATE SET "
	"  email = EXCLUDED.email, phone = EXCLUDED.phone, first_name = EXCLUDED.first_name,"
	"  last_name = EXCLUDED.last_name, properties = EXCLUDED.properties",
	9, {PAGE_ARGTYPES}, NULL
};

/*
 * Whether staged_members has the 0.2.0 layout (staged by page). A syscache
 * lookup per page; the answer changes when the extension is updated.
 */
static bool
staging_by_page(void)
{
	Oid			nsp = get_namespace_oid("cohortsync", true);
	Oid			rel = OidIsValid(nsp) ? get_relname_relid("staged_members", nsp) : InvalidOid;

	return OidIsValid(rel) && get_attnum(rel, "page_count") != InvalidAttrNumber;
}

/*
 * Whether the cohort has no member yet. Written as "the first member in key
 * order" so that it is one descent of the primary key whatever the plan's
 * estimates: a plain NOT EXISTS was planned as a sequential scan that read
 * past every member of the cohorts before this one (over a second at 1M).
 */
static CsStatement cohort_is_empty = {
	"SELECT count(*) = 0 FROM (SELECT FROM cohortsync.members WHERE " COHORT_KEY
	" ORDER BY distinct_id LIMIT 1) first_member",
	2, {TEXTOID, TEXTOID}, NULL
};

static CsStatement drop_staged = {
	"DELETE FROM cohortsync.staged_members WHERE " COHORT_KEY " AND session_id = $3",
	3, {TEXTOID, TEXTOID, TEXTOID}, NULL
};

/* Whether the cohort has anything queued: then its diff pages queue behind it. */
static CsStatement cohort_has_queue = {
	"SELECT EXISTS (SELECT FROM cohortsync.apply_queue WHERE " COHORT_KEY ")",
	2, {TEXTOID, TEXTOID}, NULL
};

/* The page completed its full sync: queue the swap. */
static CsStatement queue_swap = {
	"WITH applying AS ("
	"  UPDATE cohortsync.sync_sessions SET state = 'applying', applying_since = now()"
	"   WHERE " COHORT_KEY " AND session_id = $3 AND action = 'members')"
	" INSERT INTO cohortsync.apply_queue (project_id, cohort_id, session_id, action)"
	" VALUES ($1, $2, $3, 'members')",
	3, {TEXTOID, TEXTOID, TEXTOID}, NULL
};

/* A diff page behind a queued swap: queue its members, as bound for add/remove. */
static CsStatement queue_page = {
	"INSERT INTO cohortsync.apply_queue (project_id, cohort_id, session_id, action,"
	"  distinct_ids, emails, phones, first_names, last_names, properties)"
	" VALUES ($1, $2, $3, $10, $4, $5, $6, $7, $8, $9)",
	10, {PAGE_ARGTYPES, TEXTOID}, NULL
};

/*
 * The applier's lock on the cohort's row, taken before it writes the session's
 * and the cohort's counters: in the order a page takes its locks (cohort row,
 * then session row), so that the two never deadlock.
 */
static CsStatement lock_cohort = {
	"SELECT FROM cohortsync.cohorts WHERE " COHORT_KEY " FOR NO KEY UPDATE",
	2, {TEXTOID, TEXTOID}, NULL
};

static CsStatement get_swap_state = {
	"SELECT state FROM cohortsync.sync_sessions"
	" WHERE " COHORT_KEY " AND session_id = $3 AND action = 'members'",
	3, {TEXTOID, TEXTOID, TEXTOID}, NULL
};

/* The swap is done: the session is completed, in the swap's transaction. */
static CsStatement complete_swap = {
	"UPDATE cohortsync.sync_sessions"
	"   SET members_added = members_added + $4, members_removed = members_removed + $5,"
	"       state = 'completed', completed_at = clock_timestamp(),"
	"       apply_duration = clock_timestamp() - $6"
	" WHERE " COHORT_KEY " AND session_id = $3 AND action = 'members'",
	6, {TEXTOID, TEXTOID, TEXTOID, INT8OID, INT8OID, TIMESTAMPTZOID}, NULL
};

/* Run a kept statement; returns SPI_processed. nulls is as for SPI_execute_plan. */
static uint64
run_with_nulls(CsStatement *st, Datum *values, const char *nulls, int expected_rc)
{
	int			rc;

	if (st->plan == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(st->sql, st->nargs, st->argtypes);

		if (plan == NULL)
			elog(ERROR, "cohortsync: could not prepare statement: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		st->plan = plan;
	}
	rc = SPI_execute_plan(st->plan, values, nulls, false, 0);
	if (rc != expected_rc)
		elog(ERROR, "cohortsync: statement failed: %s", SPI_result_code_string(rc));
	return SPI_processed;
}

/* Run a kept statement none of whose parameters is NULL. */
static uint64
run(CsStatement *st, Datum *values, int expected_rc)
{
	return run_with_nulls(st, values, NULL, expected_rc);
}

static bool
first_bool(void)
{
	bool		isnull;
	Datum		d;

	if (SPI_processed == 0)
		elog(ERROR, "cohortsync: expected a row back");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return !isnull && DatumGetBool(d);
}

/*
 * Planner settings for the swap, made local to it as ri_triggers.c does for
 * RI_Initial_Check. The swap joins two sets that may each hold millions of
 * rows; a nested loop is only ever chosen when the statistics of a just-filled
 * staging table are stale, and then it is quadratic. Hash and merge joins are
 * linear whatever the estimates say, so the nested loop is taken off the menu.
 * work_mem is raised to maintenance_work_mem, as for other bulk operations.
 *
 * hash_mem_multiplier is held at 1: while the members are inserted, a hash
 * table (the anti joins), the RETURNING tuplestore and the trigger's
 * transition table are alive at once, each allowed work_mem; with the default
 * multiplier of 2 the hash alone could take twice that. This keeps the
 * backend of a ten-million-member swap within about three times
 * maintenance_work_mem; the hash joins batch to disk beyond it.
 */
/* Set a planner setting until the AtEOXact_GUC() of the current nest level. */
static void
set_local(const char *name, const char *value)
{
	(void) set_config_option(name, value, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

static int
guard_swap_plans(void)
{
	int			nestlevel = NewGUCNestLevel();
	char		workmem[32];

	snprintf(workmem, sizeof(workmem), "%d", maintenance_work_mem);
	set_local("work_mem", workmem);
	set_local("enable_nestloop", "off");
	set_local("hash_mem_multiplier", "1");
	/* the swap reads whole sets: scans are right here (the page guard is nested) */
	set_local("enable_seqscan", "on");
	/* the disabled nested loop inflates small swaps' costs past jit_above_cost */
	set_local("jit", "off");
	/* what the swap writes is queued for delivery (change_origin.c) */
	cs_mark_ingest();
	return nestlevel;
}

/*
 * Planner settings for a page's statements. A page holds at most a thousand
 * members and meets stored tables that may hold millions: the right plan
 * probes the stored side by its keys, one index descent per page member,
 * whatever the statistics say. With statistics taken while a cohort was
 * small (or before anything was analyzed, in a long session whose kept plans
 * are not replanned until the next ANALYZE), the planner preferred scanning
 * members in full, once per page member: a 1000-member page took 6.7 s at
 * 35,000 stored members. Sequential scans are taken off the menu, which
 * leaves the index probes; jit stays off for the same reason as in the swap.
 * Plans are made under these settings the first time a statement runs in a
 * session (and again after an invalidation), so they hold for kept plans too.
 */
static int
guard_page_plans(void)
{
	int			nestlevel = NewGUCNestLevel();

	set_local("enable_seqscan", "off");
	set_local("jit", "off");
	/* what the page writes is queued for delivery (change_origin.c) */
	cs_mark_ingest();
	return nestlevel;
}

/*
 * Settings for the swap's one-pass statements, on top of guard_swap_plans():
 * the full join is a merge join (a hash full join of two 1M-row sides batched
 * to disk and was about twice as slow), and work_mem is a quarter of
 * maintenance_work_mem. Two sorts, the merge join's materialized side, the
 * difference, the RETURNING tuplestores and the transition tables can be alive
 * at once, each allowed work_mem; all spill sequentially beyond it, which at 1M
 * cost nothing measurable (a quarter and the whole of maintenance_work_mem
 * timed alike).
 */
static void
guard_one_pass(void)
{
	char		workmem[32];

	snprintf(workmem, sizeof(workmem), "%d", Max(maintenance_work_mem / 4, 64));
	set_local("work_mem", workmem);
	set_local("enable_hashjoin", "off");
	/*
	 * The writes reach their rows by TID scan only: on a small cohort (or one
	 * whose statistics are stale) a sequential scan filtering on ctid would be
	 * estimated cheaper, and is linear in the cohort instead of the change.
	 * The two sides of the full join are then read through their indexes:
	 * the members' primary key (the cohort's own key range, not every cohort)
	 * and staging's (session_id, page_count).
	 */
	set_local("enable_seqscan", "off");
}

/* Replace the cohort's membership with the staged snapshot of the session. */
static void
swap_membership(Datum *key, CsApplyResult *result)
{
	Oid			argtypes[3] = {TEXTOID, TEXTOID, TEXTOID};
	int			nestlevel;
	bool		empty;
	bool		by_page = staging_by_page();

	(void) run(&cohort_is_empty, key, SPI_OK_SELECT);
	empty = first_bool();

	nestlevel = guard_swap_plans();
	if (by_page)
	{
		guard_one_pass();
		if (empty)
		{
			if (SPI_execute_with_args(first_fill_sorted_statement, 3, argtypes, key,
									  NULL, false, 0) < 0)
				elog(ERROR, "cohortsync: swap statement failed");
			result->added = SPI_processed;
		}
		else
		{
			bool		isnull;

			if (SPI_execute_with_args(churn_statement, 3, argtypes, key,
									  NULL, false, 0) != SPI_OK_SELECT ||
				SPI_processed != 1)
				elog(ERROR, "cohortsync: swap statement failed");
			result->removed = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
														  SPI_tuptable->tupdesc, 1, &isnull));
			result->added = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
														SPI_tuptable->tupdesc, 2, &isnull));
		}
	}
	else if (empty)
	{
		/* staging in the 0.1.0 layout: unique per member already */
		if (SPI_execute_with_args(first_fill_statement, 3, argtypes, key, NULL, false, 0) < 0)
			elog(ERROR, "cohortsync: swap statement failed");
		result->added = SPI_processed;
	}
	else
	{
		for (int i = 0; i < (int) lengthof(swap_statements); i++)
		{
			int			rc = SPI_execute_with_args(swap_statements[i], 3, argtypes, key,
												   NULL, false, 0);

			if (rc < 0)
				elog(ERROR, "cohortsync: swap statement failed: %s", SPI_result_code_string(rc));
			if (i == 0)
				result->removed = SPI_processed;
			else if (i == 1)
				result->added = SPI_processed;
		}
	}
	AtEOXact_GUC(true, nestlevel);

	run(&drop_staged, key, SPI_OK_DELETE);
}

/*
 * The page's new members and their history rows, written as COPY writes
 * (bulk_insert.c): a heap page at a time rather than a row at a time, which
 * was most of the difference between a page and COPY of its rows. The
 * statements insert_members and record_added write the same rows; they
 * remain for a table that a user changed (a trigger of their own, row level
 * security, ...), which bulk_insert.c leaves to them.
 */
static const char *const members_triggers[] = {"queue_profile_updates", NULL};
static const char *const changes_triggers[] = {"queue_changes", NULL};

static Oid
membership_table(const char *name)
{
	Oid			relid = get_relname_relid(name, get_namespace_oid("cohortsync", false));

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"cohortsync.%s\" does not exist", name)));
	return relid;
}

/* values as for insert_members; returns the number of members inserted */
static uint64
insert_new_members(Datum *values)
{
	CsBulkColumn columns[] = {
		{"project_id", TEXTOID, false, values[0], false},
		{"cohort_id", TEXTOID, false, values[1], false},
		PAGE_MEMBER_COLUMNS(values),
	};
	int64		inserted;

	inserted = cs_bulk_insert(membership_table("members"), members_triggers,
							  columns, lengthof(columns));
	if (inserted < 0)
		return run(&insert_members, values, SPI_OK_INSERT);
	return (uint64) inserted;
}

/* values as for record_added */
static void
record_new_members(Datum *values)
{
	CsBulkColumn columns[] = {
		{"project_id", TEXTOID, false, values[0], false},
		{"cohort_id", TEXTOID, false, values[1], false},
		{"distinct_id", TEXTOID, true, values[3], false},
		{"change", TEXTOID, false, CStringGetTextDatum("added"), false},
		{"session_id", TEXTOID, false, values[2], false},
		{"properties", JSONBOID, true, values[8], false},
	};

	if (cs_bulk_insert(membership_table("membership_changes"), changes_triggers,
					   columns, lengthof(columns)) < 0)
		(void) run(&record_added, values, SPI_OK_INSERT);
}

/*
 * values as for stage_members: the page staged as COPY writes it, as for a page
 * of new members (see insert_new_members). staged_members has no trigger of
 * ours; one a user added sends the page to the statement.
 */
static void
stage_page(Datum *values)
{
	static const char *const no_triggers[] = {NULL};
	CsBulkColumn columns[] = {
		{"project_id", TEXTOID, false, values[0], false},
		{"cohort_id", TEXTOID, false, values[1], false},
		{"session_id", TEXTOID, false, values[2], false},
		{"page_count", INT4OID, false, values[9], false},
		PAGE_MEMBER_COLUMNS(values),
	};

	if (cs_bulk_insert(membership_table("staged_members"), no_triggers,
					   columns, lengthof(columns)) < 0)
		(void) run(&stage_members, values, SPI_OK_INSERT);
}

/*
 * Insert the page as new members (insert_members). Returns false, having
 * written nothing, when one of them was stored already. The subtransaction
 * is the one a PL/pgSQL block with an EXCEPTION clause would start; its
 * rollback keeps the kept plans, the SPI connection and the caller's settings.
 * Like such a block in a loop, it holds a subtransaction id until the top
 * transaction ends (see subxid_cache_has_room).
 */
static bool
add_new_members(Datum *values, CsApplyResult *result)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool added = true;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		result->added = insert_new_members(values);
		record_new_members(values);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		/* as PL/pgSQL does: undo the subtransaction, then re-raise if not ours */
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		if (edata->sqlerrcode != ERRCODE_UNIQUE_VIOLATION)
			ReThrowError(edata);
		FreeErrorData(edata);
		result->added = 0;
		added = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return added;
}

/*
 * Whether a page may take add_new_members' subtransaction. Its id stays in this
 * backend's cache of subtransaction ids until the top transaction ends, and a
 * transaction that applies many pages (a script calling ingest for each,
 * apply_pending() with many queued) would overflow that cache: from then on,
 * every snapshot any backend takes while it is open has to look its
 * subtransactions up in pg_subtrans. So the fast path stops at half the cache,
 * leaving the rest to the caller's own subtransactions; later pages of such a
 * transaction take the probing statement, which needs none.
 */
static bool
subxid_cache_has_room(void)
{
	return !MyProc->subxidStatus.overflowed &&
		MyProc->subxidStatus.count < PGPROC_MAX_CACHED_SUBXIDS / 2;
}

/* add_members or remove_members: values as for those statements. */
static void
apply_diff(CsAction action, Datum *values, CsApplyResult *result)
{
	if (action == CS_ACTION_ADD_MEMBERS)
	{
		if (!subxid_cache_has_room() || !add_new_members(values, result))
			result->added = run(&add_members, values, SPI_OK_INSERT);
	}
	else
		result->removed = run(&remove_members, values, SPI_OK_INSERT);
}

/* The cohort's member count; values[0..1] are its key, values[2..3] are overwritten. */
static void
count_members(Datum *values, const CsApplyResult *result)
{
	if (result->added == 0 && result->removed == 0)
		return;
	values[2] = Int64GetDatum((int64) result->added);
	values[3] = Int64GetDatum((int64) result->removed);
	(void) run(&count_members_stmt, values, SPI_OK_UPDATE);
}

/*
 * The session's counters (and its completion), then the cohort's.
 * values[0..3] are project, cohort, session, action; the rest is overwritten.
 */
static void
finish_counts(Datum *values, const CsApplyResult *result, bool complete)
{
	values[4] = Int64GetDatum((int64) result->added);
	values[5] = Int64GetDatum((int64) result->removed);
	values[6] = BoolGetDatum(complete);
	(void) run(&finish_session, values, SPI_OK_UPDATE);
	count_members(values, result);
}

void
cs_apply_page(const CsPage *page, CsApplyResult *result)
{
	Datum		values[10];
	const char *action = cs_action_name(page->action);
	bool		members_sync = (page->action == CS_ACTION_MEMBERS);
	bool		complete;
	char	   *state = NULL;
	int			nestlevel;
	bool		background;

	memset(result, 0, sizeof(CsApplyResult));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "cohortsync: SPI_connect failed");
	nestlevel = guard_page_plans();		/* undone by the abort on error */

	values[0] = CStringGetTextDatum(page->project_id);
	values[1] = CStringGetTextDatum(page->cohort_id);
	values[2] = CStringGetTextDatum(page->session_id);

	/* refresh name and description, and lock the cohort (see top of file) */
	{
		char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

		values[3] = page->cohort_name ? CStringGetTextDatum(page->cohort_name) : (Datum) 0;
		values[4] = page->cohort_description ?
			CStringGetTextDatum(page->cohort_description) : (Datum) 0;
		nulls[3] = page->cohort_name ? ' ' : 'n';
		nulls[4] = page->cohort_description ? ' ' : 'n';
		(void) run_with_nulls(&upsert_cohort, values, nulls, SPI_OK_INSERT);
	}

	/* find or open the session */
	values[3] = CStringGetTextDatum(action);
	values[4] = Int32GetDatum(page->total_pages);
	if (run(&get_session, values, SPI_OK_SELECT) > 0)
	{
		bool		isnull;
		int32		total;

		state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		total = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
											2, &isnull));
		if (strcmp(state, "receiving") == 0 && total != page->total_pages)
			(void) run(&restart_session, values, SPI_OK_UPDATE);
	}
	else
	{
		if (members_sync)
			(void) run(&supersede_sessions, values, SPI_OK_DELETE);
		(void) run(&insert_session, values, SPI_OK_INSERT);
		state = "receiving";
	}

	/*
	 * Pages of a full sync that has completed or been superseded change
	 * nothing; their arrival is still recorded. Diff pages are always applied:
	 * they are idempotent, and re-applying a re-sent page is harmless.
	 */
	result->ignored = members_sync && strcmp(state, "receiving") != 0;

	/* record the page */
	values[4] = Int32GetDatum(page->page_count);
	values[5] = Int32GetDatum(page->nmembers_sent);
	result->duplicate_page = (run(&insert_page, values, SPI_OK_INSERT) == 0);
	if (result->duplicate_page)
		(void) run(&repeat_page, values, SPI_OK_UPDATE);
	values[4] = Int32GetDatum(result->duplicate_page ? 0 : 1);
	(void) run(&count_page, values, SPI_OK_UPDATE_RETURNING);
	complete = first_bool();

	if (result->ignored)
	{
		AtEOXact_GUC(true, nestlevel);
		SPI_finish();
		return;
	}

	/* the members */
	values[3] = page->distinct_ids;
	values[4] = page->emails;
	values[5] = page->phones;
	values[6] = page->first_names;
	values[7] = page->last_names;
	values[8] = page->properties;
	/* a schema older than 0.3.0 has no queue: swap at once, as 0.2.0 did */
	background = cs_apply_queue_installed();
	switch (page->action)
	{
		case CS_ACTION_MEMBERS:
			if (!staging_by_page())
			{
				(void) run(&stage_members_v1, values, SPI_OK_INSERT);
				if (complete)
					swap_membership(values, result);
				break;
			}
			if (result->duplicate_page)
			{
				Datum		page_key[4] = {values[0], values[1], values[2],
				Int32GetDatum(page->page_count)};

				(void) run(&unstage_page, page_key, SPI_OK_DELETE);
			}
			values[9] = Int32GetDatum(page->page_count);
			stage_page(values);
			if (complete && background)
			{
				(void) run(&queue_swap, values, SPI_OK_INSERT);
				result->queued = true;
			}
			else if (complete)
				swap_membership(values, result);
			break;
		case CS_ACTION_ADD_MEMBERS:
		case CS_ACTION_REMOVE_MEMBERS:
			if (background)
			{
				(void) run(&cohort_has_queue, values, SPI_OK_SELECT);
				result->queued = first_bool();
			}
			if (result->queued)
			{
				values[9] = CStringGetTextDatum(action);
				(void) run(&queue_page, values, SPI_OK_INSERT);
			}
			else
				apply_diff(page->action, values, result);
			break;
	}
	result->session_completed = complete;
	if (result->queued)
		cs_worker_wake_at_commit(CS_WORKER_APPLY);

	/* the session's and the cohort's counters; a queued swap completes later */
	values[3] = CStringGetTextDatum(action);
	finish_counts(values, result,
				  complete && !(result->queued && members_sync));

	AtEOXact_GUC(true, nestlevel);
	SPI_finish();
}

/*
 * Apply one entry of the apply queue: the swap of a completed full sync
 * (arrays NULL), or a diff page queued behind one (arrays: the six arrays as
 * cs_apply_page binds them). key is project, cohort, session. The caller holds
 * the entry's row lock and deletes it in this transaction (apply_queue.c).
 * The swap itself runs without the cohort's row lock, so that the cohort's
 * pages are answered meanwhile (they queue behind the entry).
 */
void
cs_apply_queued(Datum *key, CsAction action, Datum *arrays, CsApplyResult *result)
{
	Datum		values[10];
	int			nestlevel;

	memset(result, 0, sizeof(CsApplyResult));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "cohortsync: SPI_connect failed");
	nestlevel = guard_page_plans();

	values[0] = key[0];
	values[1] = key[1];
	values[2] = key[2];
	if (action == CS_ACTION_MEMBERS)
	{
		char	   *state = NULL;

		if (run(&get_swap_state, values, SPI_OK_SELECT) > 0)
			state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		/* the session was deleted with its cohort, or by hand: nothing to swap */
		if (state != NULL && strcmp(state, "applying") == 0)
		{
			TimestampTz started = GetCurrentTimestamp();

			swap_membership(values, result);
			(void) run(&lock_cohort, values, SPI_OK_SELECT);
			values[3] = Int64GetDatum((int64) result->added);
			values[4] = Int64GetDatum((int64) result->removed);
			values[5] = TimestampTzGetDatum(started);
			(void) run(&complete_swap, values, SPI_OK_UPDATE);
			count_members(values, result);
			result->session_completed = true;
		}
	}
	else
	{
		(void) run(&lock_cohort, values, SPI_OK_SELECT);
		for (int i = 0; i < 6; i++)
			values[3 + i] = arrays[i];
		apply_diff(action, values, result);
		values[3] = CStringGetTextDatum(cs_action_name(action));
		finish_counts(values, result, false);
	}

	AtEOXact_GUC(true, nestlevel);
	SPI_finish();
}

char *
cs_explain_swap(const char *project_id, const char *cohort_id,
				const char *session_id, bool guarded)
{
	Oid			argtypes[3] = {TEXTOID, TEXTOID, TEXTOID};
	Datum		values[3];
	StringInfoData out;
	int			nestlevel = 0;

	/* before SPI_connect: the text must outlive SPI's memory context */
	initStringInfo(&out);
	values[0] = CStringGetTextDatum(project_id);
	values[1] = CStringGetTextDatum(cohort_id);
	values[2] = CStringGetTextDatum(session_id);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "cohortsync: SPI_connect failed");
	if (guarded)
		nestlevel = guard_swap_plans();

	/*
	 * The three statements of the 0.1.0 staging layout, then the swap's
	 * one-pass statements (the later sync, the first fill), each under the
	 * settings the swap runs it with.
	 */
	for (int i = 0; i < (int) lengthof(swap_statements) + 2; i++)
	{
		const char *stmt;
		char	   *sql;

		if (i < (int) lengthof(swap_statements))
			stmt = swap_statements[i];
		else
		{
			if (!staging_by_page())
				break;
			if (guarded && i == (int) lengthof(swap_statements))
				guard_one_pass();
			stmt = i == (int) lengthof(swap_statements) ? churn_statement : first_fill_sorted_statement;
		}
		sql = psprintf("EXPLAIN (COSTS OFF) %s", stmt);

		if (SPI_execute_with_args(sql, 3, argtypes, values, NULL, false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "cohortsync: EXPLAIN failed");
		for (uint64 r = 0; r < SPI_processed; r++)
			appendStringInfo(&out, "%s\n",
							 SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1));
	}

	if (guarded)
		AtEOXact_GUC(true, nestlevel);
	SPI_finish();
	return out.data;
}
