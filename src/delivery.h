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

#endif							/* COHORTSYNC_DELIVERY_H */
