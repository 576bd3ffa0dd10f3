/*-------------------------------------------------------------------------
 *
 * change_origin.h
 *	  Which writes to the membership tables are queued for delivery.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COHORTSYNC_CHANGE_ORIGIN_H
#define COHORTSYNC_CHANGE_ORIGIN_H

/* _PG_init: defines cohortsync.queue_changes */
extern void cs_change_origin_init(void);

/*
 * Queue what the following statements write (cohortsync.queue_changes = on),
 * until the end of the caller's GUC nest level. Every path of ingest that
 * writes membership_changes or updates members must call it inside a
 * NewGUCNestLevel() (membership.c does in its planner guards).
 */
extern void cs_mark_ingest(void);

#endif							/* COHORTSYNC_CHANGE_ORIGIN_H */
