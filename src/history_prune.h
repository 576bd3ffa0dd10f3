/*-------------------------------------------------------------------------
 *
 * history_prune.h
 *	  cohortsync.history_retention: the delivery worker prunes the history.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COHORTSYNC_HISTORY_PRUNE_H
#define COHORTSYNC_HISTORY_PRUNE_H

/* _PG_init: defines cohortsync.history_retention */
extern void cs_history_prune_init(void);

/*
 * In the delivery worker, between transactions: run pruning steps for a few
 * milliseconds when a pass is due. Returns true while the pass goes on (call
 * again soon).
 */
extern bool cs_history_prune_tick(void);

#endif							/* COHORTSYNC_HISTORY_PRUNE_H */
