/*-------------------------------------------------------------------------
 *
 * delivery.h
 *	  Delivery to CleverTap: GUCs, shared memory, the background worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COHORTSYNC_DELIVERY_H
#define COHORTSYNC_DELIVERY_H

/* Called from _PG_init: GUCs always, worker and shared memory when preloading. */
extern void cs_delivery_init(void);

/*
 * Whether the library is preloaded (shared memory is there) and, if so, the
 * database the delivery worker is connected to (InvalidOid: none).
 */
extern bool cs_delivery_worker_database(Oid *dboid);

/* status.c: the library's version, and whether the SQL objects' differs */
extern const char *cs_library_version(void);
extern bool cs_sql_version_differs(char **sql_version);

#endif							/* COHORTSYNC_DELIVERY_H */
