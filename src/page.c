/*-------------------------------------------------------------------------
 *
 * page.c
 *	  Validate one Mixpanel Cohort Sync webhook page and turn it into arrays
 *	  that the SQL statements of membership.c bind as parameters.
 *
 * Nothing here touches the database. Every rule of the webhook protocol that
 * can be checked on the page alone is checked here, so that a page the sender
 * got wrong is answered with a 400 before a single row is written. Messages
 * name the offending field with a JSON-ish path, e.g.
 * "members[17] has no mixpanel_distinct_id", because Mixpanel shows them to
 * the person who configured the sync.
 *
 * Senders disagree on types: ids and page numbers arrive as strings or as
 * numbers, and both are accepted.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "page.h"

/* An action name longer than this is clipped before being echoed back. */
#define CS_MAX_ECHO_BYTES 64

/* Page numbers above this are refused: 10 million members / 1000 is 10,000 pages. */
#define CS_MAX_PAGES 1000000

/* One member while the page is being read. */
typedef struct MemberSlot
{
	text	   *distinct_id;
	int			position;		/* index in the members array, for "last wins" */
	Datum		fields[4];		/* email, phone, first_name, last_name */
	bool		field_null[4];
	Datum		properties;
} MemberSlot;

static const char *const member_fields[4] = {"email", "phone_number", "first_name", "last_name"};

/*
 * Mixpanel's reserved names for the same fields, read when the documented ones
 * are absent: a real Mixpanel body carries $email, $phone and $name and none of
 * the above. $name goes whole to first_name, and only when there is neither a
 * first nor a last name. (The SQL record builders read properties the same way:
 * _member_field, _member_first_name.)
 */
static const char *const reserved_fields[4] = {"$email", "$phone", "$name", NULL};

const char *
cs_action_name(CsAction action)
{
	switch (action)
	{
		case CS_ACTION_MEMBERS:
			return "members";
		case CS_ACTION_ADD_MEMBERS:
			return "add_members";
		case CS_ACTION_REMOVE_MEMBERS:
			return "remove_members";
	}
	return "?";					/* keep compiler quiet */
}

/* Look up a key of a JSON object; false when absent. */
static bool
get_key(JsonbContainer *object, const char *key, JsonbValue *result)
{
	return getKeyJsonValueFromContainer(object, key, strlen(key), result) != NULL;
}

static bool
is_object(const JsonbValue *v)
{
	return v->type == jbvBinary && JsonContainerIsObject(v->val.binary.data);
}

static bool
is_array(const JsonbValue *v)
{
	return v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data);
}

/* JsonbTypeName() reports containers as "binary"; say what the sender sent. */
static const char *
type_name(JsonbValue *v)
{
	if (is_object(v))
		return "an object";
	if (is_array(v))
		return "an array";
	switch (v->type)
	{
		case jbvString:
			return "a string";
		case jbvNumeric:
			return "a number";
		case jbvBool:
			return "a boolean";
		case jbvNull:
			return "null";
		default:
			return JsonbTypeName(v);
	}
}

/* A copy of s clipped to at most maxbytes, never splitting a character. */
static char *
clip(const char *s, int len, int maxbytes)
{
	if (len > maxbytes)
		len = pg_mbcliplen(s, len, maxbytes);
	return pnstrdup(s, len);
}

/*
 * The text of an identifier sent as a string or a number. Returns NULL with
 * *err set when it is of another type, empty, or longer than CS_MAX_ID_BYTES.
 */
static char *
id_text(JsonbValue *v, const char *where, char **err)
{
	char	   *s;
	int			len;

	if (v->type == jbvString)
	{
		s = v->val.string.val;
		len = v->val.string.len;
	}
	else if (v->type == jbvNumeric)
	{
		s = numeric_normalize(v->val.numeric);
		len = strlen(s);
	}
	else
	{
		*err = psprintf("%s must be a string or a number, not %s", where, type_name(v));
		return NULL;
	}

	if (len == 0)
	{
		*err = psprintf("%s is empty", where);
		return NULL;
	}
	if (len > CS_MAX_ID_BYTES)
	{
		*err = psprintf("%s is %d bytes long, more than the %d allowed",
						where, len, CS_MAX_ID_BYTES);
		return NULL;
	}
	return pnstrdup(s, len);
}

/*
 * A page number: a positive integer sent as a number or a string of digits.
 */
static bool
page_number(JsonbValue *v, const char *where, int32 *result, char **err)
{
	const char *digits;
	int			len;
	int64		n = 0;

	if (v->type == jbvNumeric)
	{
		/* numeric_normalize drops trailing zeros, so 3.0 reads as "3" */
		digits = numeric_normalize(v->val.numeric);
		len = strlen(digits);
	}
	else if (v->type == jbvString)
	{
		digits = v->val.string.val;
		len = v->val.string.len;
	}
	else
	{
		*err = psprintf("%s must be a positive integer, not %s", where, type_name(v));
		return false;
	}

	for (int i = 0; i < len; i++)
	{
		if (digits[i] < '0' || digits[i] > '9' || n > CS_MAX_PAGES)
		{
			n = -1;
			break;
		}
		n = n * 10 + (digits[i] - '0');
	}
	if (len == 0 || n < 1 || n > CS_MAX_PAGES)
	{
		*err = psprintf("%s must be a positive integer no larger than %d, not %s",
						where, CS_MAX_PAGES, clip(digits, len, CS_MAX_ECHO_BYTES));
		return false;
	}
	*result = (int32) n;
	return true;
}

/*
 * An optional text parameter (cohort name or description). NULL when absent
 * or JSON null; numbers are taken as their text.
 */
static bool
optional_text(JsonbContainer *object, const char *key, const char *where,
			  char **result, char **err)
{
	JsonbValue	v;

	*result = NULL;
	if (!get_key(object, key, &v) || v.type == jbvNull)
		return true;
	if (v.type == jbvString)
		*result = pnstrdup(v.val.string.val, v.val.string.len);
	else if (v.type == jbvNumeric)
		*result = numeric_normalize(v.val.numeric);
	else
	{
		*err = psprintf("%s must be a string, not %s", where, type_name(&v));
		return false;
	}
	return true;
}

/* A required id of the parameters object. */
static char *
required_id(JsonbContainer *params, const char *key, char **err)
{
	JsonbValue	v;
	char	   *where = psprintf("parameters.%s", key);

	if (!get_key(params, key, &v) || v.type == jbvNull)
	{
		*err = psprintf("%s is missing", where);
		return NULL;
	}
	return id_text(&v, where, err);
}

static bool
parse_page_info(JsonbContainer *params, CsPage *page, char **err)
{
	JsonbValue	info;
	JsonbValue	v;

	page->page_count = 1;
	page->total_pages = 1;

	/* A missing page_info means a single page. */
	if (!get_key(params, "page_info", &info) || info.type == jbvNull)
		return true;
	if (!is_object(&info))
	{
		*err = psprintf("parameters.page_info must be an object, not %s", type_name(&info));
		return false;
	}

	if (!get_key(info.val.binary.data, "total_pages", &v))
	{
		*err = pstrdup("parameters.page_info.total_pages is missing");
		return false;
	}
	if (!page_number(&v, "parameters.page_info.total_pages", &page->total_pages, err))
		return false;

	if (!get_key(info.val.binary.data, "page_count", &v))
	{
		*err = pstrdup("parameters.page_info.page_count is missing");
		return false;
	}
	if (!page_number(&v, "parameters.page_info.page_count", &page->page_count, err))
		return false;

	if (page->page_count > page->total_pages)
	{
		*err = psprintf("page_count %d exceeds total_pages %d",
						page->page_count, page->total_pages);
		return false;
	}
	return true;
}

/* A profile field's text: a string, or a number (phone numbers do arrive as numbers). */
static bool
field_value(JsonbValue *v, Datum *value)
{
	if (v->type == jbvString)
		*value = PointerGetDatum(cstring_to_text_with_len(v->val.string.val, v->val.string.len));
	else if (v->type == jbvNumeric)
		*value = CStringGetTextDatum(numeric_normalize(v->val.numeric));
	else
		return false;
	return true;
}

/*
 * Read members[index] into slot. key_bytes is the length of the page's
 * project, cohort and session ids together (see CS_MAX_KEY_BYTES).
 */
static bool
parse_member(JsonbValue *elem, int index, int key_bytes, MemberSlot *slot, char **err)
{
	JsonbContainer *member;
	JsonbValue	v;
	char	   *id;

	if (!is_object(elem))
	{
		*err = psprintf("members[%d] must be an object, not %s", index, type_name(elem));
		return false;
	}
	member = elem->val.binary.data;

	if (!get_key(member, "mixpanel_distinct_id", &v) || v.type == jbvNull)
	{
		*err = psprintf("members[%d] has no mixpanel_distinct_id", index);
		return false;
	}
	id = id_text(&v, psprintf("members[%d].mixpanel_distinct_id", index), err);
	if (id == NULL)
		return false;
	if (key_bytes + (int) strlen(id) > CS_MAX_KEY_BYTES)
	{
		*err = psprintf("members[%d].mixpanel_distinct_id is %d bytes long; with the page's project, cohort and session ids that is %d bytes, more than the %d allowed together",
						index, (int) strlen(id), key_bytes + (int) strlen(id), CS_MAX_KEY_BYTES);
		return false;
	}
	slot->distinct_id = cstring_to_text(id);
	slot->position = index;

	for (int f = 0; f < (int) lengthof(member_fields); f++)
	{
		slot->field_null[f] = true;
		slot->fields[f] = (Datum) 0;
		if (!get_key(member, member_fields[f], &v) || v.type == jbvNull)
			continue;
		if (!field_value(&v, &slot->fields[f]))
		{
			*err = psprintf("members[%d].%s must be a string, not %s",
							index, member_fields[f], type_name(&v));
			return false;
		}
		slot->field_null[f] = false;
	}
	for (int f = 0; f < (int) lengthof(reserved_fields); f++)
	{
		/* a reserved name of another type is ignored: it was never required */
		if (reserved_fields[f] == NULL || !slot->field_null[f] ||
			(f == 2 && !slot->field_null[3]) ||
			!get_key(member, reserved_fields[f], &v) || !field_value(&v, &slot->fields[f]))
			continue;
		slot->field_null[f] = false;
	}

	/* The member object itself, byte for byte as jsonb, including extra properties. */
	slot->properties = JsonbPGetDatum(JsonbValueToJsonb(elem));
	return true;
}

/* Order by distinct_id bytes, then by position so that the last duplicate is last. */
static int
member_cmp(const void *a, const void *b)
{
	const MemberSlot *ma = (const MemberSlot *) a;
	const MemberSlot *mb = (const MemberSlot *) b;
	int			la = VARSIZE_ANY_EXHDR(ma->distinct_id);
	int			lb = VARSIZE_ANY_EXHDR(mb->distinct_id);
	int			c = memcmp(VARDATA_ANY(ma->distinct_id), VARDATA_ANY(mb->distinct_id), Min(la, lb));

	if (c != 0)
		return c;
	if (la != lb)
		return la < lb ? -1 : 1;
	return ma->position - mb->position;
}

static bool
same_id(const MemberSlot *a, const MemberSlot *b)
{
	return VARSIZE_ANY_EXHDR(a->distinct_id) == VARSIZE_ANY_EXHDR(b->distinct_id) &&
		memcmp(VARDATA_ANY(a->distinct_id), VARDATA_ANY(b->distinct_id),
			   VARSIZE_ANY_EXHDR(a->distinct_id)) == 0;
}

static Datum
build_array(Datum *values, bool *nulls, int n, Oid elemtype)
{
	int			dims[1] = {n};
	int			lbs[1] = {1};

	/* text and jsonb are both varlena with int alignment */
	return PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs,
											  elemtype, -1, false, TYPALIGN_INT));
}

static bool
parse_members(JsonbContainer *params, CsPage *page, char **err)
{
	JsonbValue	v;
	JsonbIterator *it;
	JsonbIteratorToken tok;
	MemberSlot *slots;
	int			n = 0;
	int			kept = 0;
	int			key_bytes;
	Datum	   *ids,
			   *props,
			   *fields[4];
	bool	   *nulls[4];

	if (!get_key(params, "members", &v))
	{
		*err = pstrdup("parameters.members is missing");
		return false;
	}
	if (!is_array(&v))
	{
		*err = psprintf("parameters.members must be an array, not %s", type_name(&v));
		return false;
	}

	key_bytes = strlen(page->project_id) + strlen(page->cohort_id) + strlen(page->session_id);
	slots = palloc(sizeof(MemberSlot) * Max(1, JsonContainerSize(v.val.binary.data)));
	it = JsonbIteratorInit(v.val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok != WJB_ELEM)
			continue;
		if (!parse_member(&v, n, key_bytes, &slots[n], err))
			return false;
		n++;
	}
	page->nmembers_sent = n;

	/*
	 * Mixpanel pages should not repeat a user, but if one does, the last
	 * occurrence wins, as it would have had we applied the page row by row.
	 * Sorting also hands the rows to the index in key order.
	 */
	qsort(slots, n, sizeof(MemberSlot), member_cmp);
	for (int i = 0; i < n; i++)
	{
		if (i + 1 < n && same_id(&slots[i], &slots[i + 1]))
			continue;
		slots[kept++] = slots[i];
	}
	page->nmembers = kept;

	ids = palloc(sizeof(Datum) * Max(1, kept));
	props = palloc(sizeof(Datum) * Max(1, kept));
	for (int f = 0; f < 4; f++)
	{
		fields[f] = palloc(sizeof(Datum) * Max(1, kept));
		nulls[f] = palloc(sizeof(bool) * Max(1, kept));
	}
	for (int i = 0; i < kept; i++)
	{
		ids[i] = PointerGetDatum(slots[i].distinct_id);
		props[i] = slots[i].properties;
		for (int f = 0; f < 4; f++)
		{
			fields[f][i] = slots[i].fields[f];
			nulls[f][i] = slots[i].field_null[f];
		}
	}
	page->distinct_ids = build_array(ids, NULL, kept, TEXTOID);
	page->emails = build_array(fields[0], nulls[0], kept, TEXTOID);
	page->phones = build_array(fields[1], nulls[1], kept, TEXTOID);
	page->first_names = build_array(fields[2], nulls[2], kept, TEXTOID);
	page->last_names = build_array(fields[3], nulls[3], kept, TEXTOID);
	page->properties = build_array(props, NULL, kept, JSONBOID);
	return true;
}

char *
cs_page_parse(Jsonb *body, CsPage *page)
{
	JsonbValue	v;
	JsonbContainer *params;
	char	   *err = NULL;

	memset(page, 0, sizeof(CsPage));

	if (JB_ROOT_IS_SCALAR(body) || !JB_ROOT_IS_OBJECT(body))
		return pstrdup("the page must be a JSON object");

	if (!get_key(&body->root, "action", &v) || v.type == jbvNull)
		return pstrdup("action is missing");
	if (v.type != jbvString)
		return psprintf("action must be a string, not %s", type_name(&v));
	page->action_name = clip(v.val.string.val, v.val.string.len, CS_MAX_ECHO_BYTES);
	if (strcmp(page->action_name, "members") == 0 && v.val.string.len == 7)
		page->action = CS_ACTION_MEMBERS;
	else if (strcmp(page->action_name, "add_members") == 0 && v.val.string.len == 11)
		page->action = CS_ACTION_ADD_MEMBERS;
	else if (strcmp(page->action_name, "remove_members") == 0 && v.val.string.len == 14)
		page->action = CS_ACTION_REMOVE_MEMBERS;
	else
	{
		StringInfoData msg;

		initStringInfo(&msg);
		appendStringInfoString(&msg, "unknown action ");
		escape_json(&msg, page->action_name);
		appendStringInfoString(&msg, "; expected members, add_members or remove_members");
		return msg.data;
	}

	if (!get_key(&body->root, "parameters", &v) || v.type == jbvNull)
		return pstrdup("parameters is missing");
	if (!is_object(&v))
		return psprintf("parameters must be an object, not %s", type_name(&v));
	params = v.val.binary.data;

	if ((page->project_id = required_id(params, "mixpanel_project_id", &err)) == NULL ||
		(page->cohort_id = required_id(params, "mixpanel_cohort_id", &err)) == NULL ||
		(page->session_id = required_id(params, "mixpanel_session_id", &err)) == NULL)
		return err;

	/* they are key columns together (see CS_MAX_KEY_BYTES) */
	if (strlen(page->project_id) + strlen(page->cohort_id) + strlen(page->session_id) >
		CS_MAX_KEY_BYTES)
		return psprintf("parameters.mixpanel_project_id, mixpanel_cohort_id and mixpanel_session_id are %d bytes long together, more than the %d allowed",
						(int) (strlen(page->project_id) + strlen(page->cohort_id) +
							   strlen(page->session_id)),
						CS_MAX_KEY_BYTES);

	if (!optional_text(params, "mixpanel_cohort_name", "parameters.mixpanel_cohort_name",
					   &page->cohort_name, &err) ||
		!optional_text(params, "mixpanel_cohort_description",
					   "parameters.mixpanel_cohort_description",
					   &page->cohort_description, &err) ||
		!parse_page_info(params, page, &err) ||
		!parse_members(params, page, &err))
		return err;

	return NULL;
}
