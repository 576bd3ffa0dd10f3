/*-------------------------------------------------------------------------
 *
 * page.h
 *	  One Mixpanel Cohort Sync webhook page, validated and ready to apply.
 *
 * Parsing is kept apart from applying so that a page is judged whole before
 * anything is written: a bad page gets a 400 answer and changes nothing.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COHORTSYNC_PAGE_H
#define COHORTSYNC_PAGE_H

#include "utils/jsonb.h"

/* Longest project, cohort, session or member id we accept, in bytes. */
#define CS_MAX_ID_BYTES 1024

/*
 * Longest project, cohort and session id plus one member's distinct_id, in
 * bytes together. They are the columns of the tables' primary keys, and a
 * btree entry must fit in a third of a page (2704 bytes): four ids of 1024
 * bytes that do not compress made the insert fail with an SQL error (a 500
 * through the listener, retried for ever) instead of a 400. 2600 leaves room
 * for the varlena headers, alignment, the action and the page number.
 */
#define CS_MAX_KEY_BYTES 2600

typedef enum CsAction
{
	CS_ACTION_MEMBERS,			/* full sync: the whole cohort, maybe in many pages */
	CS_ACTION_ADD_MEMBERS,		/* diff: users who entered the cohort */
	CS_ACTION_REMOVE_MEMBERS	/* diff: users who left it */
} CsAction;

typedef struct CsPage
{
	/*
	 * The action exactly as received (clipped if absurdly long), echoed in the
	 * response as Mixpanel requires; NULL when it was not a string.
	 */
	char	   *action_name;
	CsAction	action;

	char	   *project_id;
	char	   *cohort_id;
	char	   *session_id;
	char	   *cohort_name;	/* NULL when not sent */
	char	   *cohort_description; /* NULL when not sent */

	int32		page_count;		/* 1-based; 1 when page_info is absent */
	int32		total_pages;

	/*
	 * Members, de-duplicated by distinct_id (the last occurrence in the page
	 * wins) and sorted by it. The arrays are ready to bind as SPI parameters;
	 * a NULL Datum slot means SQL NULL.
	 */
	int			nmembers;
	int			nmembers_sent;	/* before de-duplication */
	Datum		distinct_ids;	/* text[] */
	Datum		emails;			/* text[] */
	Datum		phones;			/* text[] */
	Datum		first_names;	/* text[] */
	Datum		last_names;		/* text[] */
	Datum		properties;		/* jsonb[]: each member object as sent */
} CsPage;

/*
 * Validate a webhook body. Returns NULL and fills *page when it is acceptable,
 * or a message saying what is wrong and where. page->action_name is set
 * whenever the action could be read, so that failures echo it too.
 */
extern char *cs_page_parse(Jsonb *body, CsPage *page);

extern const char *cs_action_name(CsAction action);

#endif							/* COHORTSYNC_PAGE_H */
