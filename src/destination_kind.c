/*-------------------------------------------------------------------------
 *
 * destination_kind.c
 *	  The table of destination kinds.
 *
 * A new kind is a file kind_<name>.c defining its CsDestinationKind, a line
 * here, and its SQL (record builder, _read_answer, _kind_limits).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "destination_kind.h"

static const CsDestinationKind *const kinds[] = {
	&cs_kind_clevertap,
	&cs_kind_mparticle,
	&cs_kind_braze,
};

const CsDestinationKind *
cs_destination_kind(const char *name)
{
	for (size_t i = 0; i < lengthof(kinds); i++)
		if (strcmp(kinds[i]->name, name) == 0)
			return kinds[i];
	return NULL;
}
