/*-------------------------------------------------------------------------
 *
 * guc_common.h
 *	  Settings shared by more than one part of cohortsync.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COHORTSYNC_GUC_COMMON_H
#define COHORTSYNC_GUC_COMMON_H

/* cohortsync.database: the database the background workers connect to */
extern char *cs_database;

extern void cs_define_common_gucs(void);

#endif							/* COHORTSYNC_GUC_COMMON_H */
