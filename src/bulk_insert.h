/*-------------------------------------------------------------------------
 *
 * bulk_insert.h
 *	  Insert a batch of rows into a table the way COPY does.
 *
 *-------------------------------------------------------------------------
 */
#ifndef COHORTSYNC_BULK_INSERT_H
#define COHORTSYNC_BULK_INSERT_H

/*
 * One column of the batch: the same value for every row, or (per_row) an
 * array Datum holding each row's value, in row order. type is the column's
 * type (the element type for per_row).
 */
typedef struct CsBulkColumn
{
	const char *name;
	Oid			type;
	bool		per_row;
	Datum		value;
	bool		isnull;
} CsBulkColumn;

/*
 * Insert the rows into the table, columns not named taking their defaults, as
 * an INSERT of them would (constraints, unique checks, AFTER triggers and
 * their transition tables). Returns the number of rows inserted, or -1,
 * having done nothing, when the table is not one that can be written this way
 * (see bulk_insert.c); the caller then runs its INSERT statement instead.
 * own_triggers: NULL-terminated names of the triggers the caller knows about;
 * any other trigger on the table sends the caller to its statement.
 */
extern int64 cs_bulk_insert(Oid relid, const char *const *own_triggers,
							const CsBulkColumn *columns, int ncolumns);

#endif							/* COHORTSYNC_BULK_INSERT_H */
