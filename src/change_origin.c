/*-------------------------------------------------------------------------
 *
 * change_origin.c
 *	  Which writes to the membership tables are queued for delivery.
 *
 * The outbox triggers on membership_changes (INSERT) and members (UPDATE)
 * queue CleverTap records only while cohortsync.queue_changes is on. Ingest
 * (membership.c) turns it on for its own statements, at the nest level of its
 * planner guards, so it is off again when they end (or fail). Anything else
 * that writes those tables queues nothing: above all a restore, whose COPY of
 * membership_changes would otherwise queue the whole history again (and then
 * collide with the restored outbox rows). A superuser may SET LOCAL it on to
 * queue changes written by hand.
 *
 * Users' own triggers on the tables are not affected: they fire as always.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/guc.h"

#include "change_origin.h"

static bool cs_queue_changes = false;

void
cs_change_origin_init(void)
{
	DefineCustomBoolVariable("cohortsync.queue_changes",
							 "Queue the changes written to the membership tables for delivery.",
							 "Ingest turns it on for its own statements; other writes "
							 "(a restore's COPY, statements typed by hand) queue nothing.",
							 &cs_queue_changes,
							 false,
							 PGC_SUSET,
							 GUC_NOT_IN_SAMPLE | GUC_DISALLOW_IN_FILE | GUC_NO_RESET_ALL,
							 NULL, NULL, NULL);
}

void
cs_mark_ingest(void)
{
	/* until the AtEOXact_GUC() of the caller's nest level, or an abort */
	(void) set_config_option("cohortsync.queue_changes", "on", PGC_SUSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}
