/*-------------------------------------------------------------------------
 *
 * guc_common.h
 *	  GUCs shared by the parts of cohortsync that run background workers.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COHORTSYNC_GUC_COMMON_H
#define COHORTSYNC_GUC_COMMON_H

/* cohortsync.database: the database the background workers connect to. */
extern char *cs_database;

/* Define the shared GUCs; safe to call more than once. */
extern void cs_define_common_gucs(void);

#endif							/* COHORTSYNC_GUC_COMMON_H */
