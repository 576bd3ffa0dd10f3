/*-------------------------------------------------------------------------
 *
 * http_pool.c
 *	  The webhook listener's jobs: the acceptor hands each request's database
 *	  work to an idle worker and gets the answer back.
 *
 * Why a pool: a request's database work can take long (a lock wait on one
 * cohort, a big full-sync swap). Run inside the process that also does the
 * HTTP, it would hold up every other connection, /healthz included. So one
 * process, the acceptor, does all of the HTTP (libmicrohttpd, TLS, slow
 * clients, bodies) and never waits for the database, and cohortsync.http_workers
 * database workers each run one request's transactions at a time. A slow
 * request ties up one worker; the others, and the acceptor, go on.
 *
 * A job is a dynamic shared memory segment made by the acceptor once a
 * request's body is in: the credentials and the body, and room for the
 * answer. Each worker has a slot in (fixed) shared memory:
 *
 *	  EMPTY	   no worker connected
 *	  IDLE	   a worker waits for a job
 *	  ASSIGNED the acceptor put a job in the slot and set the worker's latch
 *	  DONE	   the worker wrote the answer (or left without one: status 0)
 *
 * and the acceptor, woken by its latch, takes the answer and makes the slot
 * IDLE again. Only the acceptor dispatches, so a job waits in the acceptor's
 * own queue while every worker is busy. Each side keeps the segment mapped
 * while it needs it; it goes away when both have detached, whichever is
 * first (a request whose client hung up; a worker that exited).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/ilist.h"
#include "miscadmin.h"
#include "storage/dsm.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/memutils.h"

#include "http_pool.h"

/* Room for the answer beyond the body's size (an answer may echo an id). */
#define CS_JOB_ANSWER_SPACE (64 * 1024)
#define CS_JOB_NOTE_BYTES 64

typedef enum CsSlotState
{
	CS_SLOT_EMPTY,
	CS_SLOT_IDLE,
	CS_SLOT_ASSIGNED,
	CS_SLOT_DONE
} CsSlotState;

typedef struct CsHttpSlot
{
	slock_t		mutex;			/* protects everything below */
	CsSlotState state;
	Latch	   *worker_latch;	/* NULL: no worker connected */
	uint64		job_id;			/* the acceptor's id of the job in the slot */
	dsm_handle	job;
} CsHttpSlot;

typedef struct CsHttpPool
{
	slock_t		mutex;			/* protects acceptor_latch */
	Latch	   *acceptor_latch; /* NULL: no acceptor running */
	CsHttpSlot	slots[CS_HTTP_MAX_WORKERS];
} CsHttpPool;

/* The segment of one job. Offsets are from the start of data[]. */
typedef struct CsJobData
{
	/* written by the acceptor */
	CsHttpJobKind kind;
	bool		authenticate;
	bool		has_credentials;
	Size		username_off;
	Size		password_off;
	Size		password_len;
	Size		body_off;
	Size		body_len;
	Size		answer_off;
	Size		answer_space;
	/* written by the worker */
	int			status;			/* 0: the worker left without answering */
	Size		answer_len;
	char		note[CS_JOB_NOTE_BYTES];
	char		data[FLEXIBLE_ARRAY_MEMBER];
} CsJobData;

/*
 * The acceptor's side of a job. While it is queued it points into its
 * request's memory; the segment is made only when a worker takes it, so
 * that queued requests take no shared memory.
 */
struct CsHttpJob
{
	dlist_node	node;			/* in the queue while waiting for a worker */
	uint64		id;
	int			slot;			/* -1 while queued */
	CsHttpJobKind kind;
	bool		authenticate;
	const char *username;		/* the request's; NULL if none */
	const char *password;
	const char *body;
	size_t		len;
	dsm_segment *seg;			/* NULL until a worker takes the job */
	CsJobData  *data;
	void	   *owner;			/* the request; NULL once it is gone */
};

static CsHttpPool *pool = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* In the acceptor */
static dlist_head queue = DLIST_STATIC_INIT(queue);
static CsHttpJob *in_slot[CS_HTTP_MAX_WORKERS];
static uint64 next_job_id = 0;
static int	next_slot = 0;		/* round robin, so that every worker serves */

static void
pool_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(CsHttpPool)));
}

static void
pool_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	pool = ShmemInitStruct("cohortsync http pool", sizeof(CsHttpPool), &found);
	if (!found)
	{
		SpinLockInit(&pool->mutex);
		pool->acceptor_latch = NULL;
		for (int i = 0; i < CS_HTTP_MAX_WORKERS; i++)
		{
			SpinLockInit(&pool->slots[i].mutex);
			pool->slots[i].state = CS_SLOT_EMPTY;
			pool->slots[i].worker_latch = NULL;
			pool->slots[i].job_id = 0;
			pool->slots[i].job = 0;
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

void
cs_http_pool_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = pool_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = pool_shmem_startup;
}

/*
 * Latches are set outside the spinlocks (a system call has no place under
 * one). A latch is a PGPROC's and outlives its process: setting it after
 * the process has gone does nothing.
 */
static void
wake_acceptor(void)
{
	Latch	   *latch;

	SpinLockAcquire(&pool->mutex);
	latch = pool->acceptor_latch;
	SpinLockRelease(&pool->mutex);
	if (latch != NULL)
		SetLatch(latch);
}

/*-------------------------------------------------------------------------
 * In the acceptor.
 *-------------------------------------------------------------------------
 */

static void
unpublish_acceptor(int code, Datum arg)
{
	SpinLockAcquire(&pool->mutex);
	pool->acceptor_latch = NULL;
	SpinLockRelease(&pool->mutex);
}

/* Let the workers wake us. Jobs of an acceptor before us are forgotten. */
void
cs_http_pool_acceptor_start(void)
{
	SpinLockAcquire(&pool->mutex);
	pool->acceptor_latch = MyLatch;
	SpinLockRelease(&pool->mutex);
	before_shmem_exit(unpublish_acceptor, (Datum) 0);
	/* ids unique across acceptors: a stale answer is never taken for ours */
	next_job_id = ((uint64) MyProcPid) << 32;
}

/* How many workers are connected to the database and can take jobs. */
int
cs_http_pool_workers(void)
{
	int			n = 0;

	for (int i = 0; i < CS_HTTP_MAX_WORKERS; i++)
	{
		SpinLockAcquire(&pool->slots[i].mutex);
		if (pool->slots[i].worker_latch != NULL)
			n++;
		SpinLockRelease(&pool->slots[i].mutex);
	}
	return n;
}

static void
put_string(CsJobData *data, Size *off, Size at, const char *s, Size len)
{
	*off = at;
	memcpy(data->data + at, s, len);
	data->data[at + len] = '\0';
}

/*
 * A segment of size bytes, or NULL (the error logged) if it cannot be made:
 * e.g. /dev/shm is full, and then this request fails, not the acceptor. A
 * function of its own, so that no caller's local lives across the longjmp.
 */
static dsm_segment *
create_segment(Size size)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	dsm_segment *volatile seg = NULL;

	PG_TRY();
	{
		seg = dsm_create(size, DSM_CREATE_NULL_IF_MAXSEGMENTS);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		EmitErrorReport();
		FlushErrorState();
		seg = NULL;
	}
	PG_END_TRY();
	return seg;
}

/*
 * Make the job's segment: the credentials, the body and room for the answer.
 * false (and a log line) if shared memory is short; the job is then answered
 * 503.
 */
static bool
make_segment(CsHttpJob *job)
{
	Size		ulen = job->username ? strlen(job->username) : 0;
	Size		plen = job->password ? strlen(job->password) : 0;
	Size		answer_space = job->len + CS_JOB_ANSWER_SPACE;
	Size		size;
	CsJobData  *data;

	size = add_size(offsetof(CsJobData, data), ulen + plen + job->len + 3);
	size = add_size(size, answer_space);
	job->seg = create_segment(size);
	if (job->seg == NULL)
	{
		ereport(LOG,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("cohortsync http: could not make a shared memory segment of %zu bytes for a request; answering 503",
						(size_t) size)));
		return false;
	}
	dsm_pin_mapping(job->seg);	/* ours until we detach, not a resource owner's */

	data = job->data = dsm_segment_address(job->seg);
	memset(data, 0, offsetof(CsJobData, data));
	data->kind = job->kind;
	data->authenticate = job->authenticate;
	data->has_credentials = job->username != NULL && job->password != NULL;
	put_string(data, &data->username_off, 0, job->username ? job->username : "", ulen);
	put_string(data, &data->password_off, ulen + 1, job->password ? job->password : "", plen);
	data->password_len = plen;
	put_string(data, &data->body_off, ulen + plen + 2, job->body ? job->body : "", job->len);
	data->body_len = job->len;
	data->answer_off = ulen + plen + job->len + 3;
	data->answer_space = answer_space;
	return true;
}

/*
 * Queue a job for owner's request; it goes to a worker as soon as one is
 * idle, and cs_http_request_job_done(owner, job) is called when it is
 * finished (never from in here: the caller suspends the connection first).
 * The strings must stay until then, or until cs_http_pool_cancel().
 */
CsHttpJob *
cs_http_pool_submit(CsHttpJobKind kind, bool authenticate,
					const char *username, const char *password,
					const char *body, size_t len, void *owner)
{
	CsHttpJob  *job;

	job = MemoryContextAllocZero(TopMemoryContext, sizeof(CsHttpJob));
	job->kind = kind;
	job->authenticate = authenticate;
	job->username = username;
	job->password = password;
	job->body = body;
	job->len = len;
	job->id = ++next_job_id;
	job->slot = -1;
	job->owner = owner;
	dlist_push_tail(&queue, &job->node);
	/* dispatched by the wait loop's next cs_http_pool_poll(), at once */
	SetLatch(MyLatch);
	return job;
}

static void
free_job(CsHttpJob *job)
{
	if (job->seg != NULL)
	{
		/* the password never outlives the request on our side */
		explicit_bzero(job->data->data + job->data->password_off, job->data->password_len);
		dsm_detach(job->seg);
	}
	pfree(job);
}

/* A job is over: tell its request, if it is still there, and forget it. */
static void
finish_job(CsHttpJob *job)
{
	if (job->owner != NULL)
		cs_http_request_job_done(job->owner, job);
	free_job(job);
}

typedef enum CsDispatch
{
	CS_DISPATCH_DONE,			/* a worker has it */
	CS_DISPATCH_BUSY,			/* no worker is idle */
	CS_DISPATCH_FAILED			/* no shared memory for it */
} CsDispatch;

/* Give the job to an idle worker, if there is one. */
static CsDispatch
dispatch(CsHttpJob *job)
{
	for (int n = 0; n < CS_HTTP_MAX_WORKERS; n++)
	{
		int			i = (next_slot + n) % CS_HTTP_MAX_WORKERS;
		CsHttpSlot *slot = &pool->slots[i];
		bool		idle;
		Latch	   *latch = NULL;

		SpinLockAcquire(&slot->mutex);
		idle = slot->state == CS_SLOT_IDLE && in_slot[i] == NULL;
		SpinLockRelease(&slot->mutex);
		if (!idle)
			continue;

		/* made outside the spinlock; the slot stays idle meanwhile: only we assign */
		if (job->seg == NULL && !make_segment(job))
			return CS_DISPATCH_FAILED;

		SpinLockAcquire(&slot->mutex);
		idle = slot->state == CS_SLOT_IDLE;
		if (idle)
		{
			slot->state = CS_SLOT_ASSIGNED;
			slot->job_id = job->id;
			slot->job = dsm_segment_handle(job->seg);
			latch = slot->worker_latch;
		}
		SpinLockRelease(&slot->mutex);
		if (!idle)
			continue;			/* its worker just left */
		SetLatch(latch);
		job->slot = i;
		in_slot[i] = job;
		next_slot = (i + 1) % CS_HTTP_MAX_WORKERS;
		return CS_DISPATCH_DONE;
	}
	return CS_DISPATCH_BUSY;
}

/* Take the answers of finished jobs; give queued jobs to idle workers. */
void
cs_http_pool_poll(void)
{
	int			workers = 0;

	for (int i = 0; i < CS_HTTP_MAX_WORKERS; i++)
	{
		CsHttpSlot *slot = &pool->slots[i];
		CsHttpJob  *done = NULL;

		SpinLockAcquire(&slot->mutex);
		if (slot->state == CS_SLOT_DONE)
		{
			if (in_slot[i] != NULL && in_slot[i]->id == slot->job_id)
				done = in_slot[i];
			/* a stale job (of an acceptor before us) is simply dropped */
			slot->state = slot->worker_latch ? CS_SLOT_IDLE : CS_SLOT_EMPTY;
			in_slot[i] = NULL;
		}
		if (slot->worker_latch != NULL)
			workers++;
		SpinLockRelease(&slot->mutex);

		if (done != NULL)
			finish_job(done);
	}

	while (!dlist_is_empty(&queue))
	{
		CsHttpJob  *job = dlist_head_element(CsHttpJob, node, &queue);
		CsDispatch	d = workers > 0 ? dispatch(job) : CS_DISPATCH_FAILED;

		if (d == CS_DISPATCH_BUSY)
			break;				/* every worker is busy: wait for one */
		dlist_pop_head_node(&queue);
		if (d == CS_DISPATCH_FAILED)
			finish_job(job);	/* nobody to do it, or no memory: a 503 */
	}
}

/* The request is gone (client hung up, daemon stopped): drop its job. */
void
cs_http_pool_cancel(CsHttpJob *job)
{
	job->owner = NULL;
	if (job->slot < 0)
	{
		dlist_delete(&job->node);
		free_job(job);
	}
	/* else the worker has it; it is freed when the worker is done */
}

/*
 * Stopping the daemon: every request waiting for a job gets its answer now
 * (a 503), since libmicrohttpd cannot stop with requests suspended.
 */
void
cs_http_pool_fail_all(void)
{
	while (!dlist_is_empty(&queue))
	{
		CsHttpJob  *job = dlist_head_element(CsHttpJob, node, &queue);

		dlist_pop_head_node(&queue);
		finish_job(job);
	}
	for (int i = 0; i < CS_HTTP_MAX_WORKERS; i++)
	{
		if (in_slot[i] != NULL && in_slot[i]->owner != NULL)
		{
			void	   *owner = in_slot[i]->owner;

			in_slot[i]->owner = NULL;
			cs_http_request_job_done(owner, NULL);
		}
	}
}

/*
 * The answer of a finished job, allocated in the current memory context.
 * job == NULL, or a job whose worker left first, is a 503.
 */
void
cs_http_job_result(CsHttpJob *job, CsHttpAnswer *answer)
{
	CsJobData  *data = job ? job->data : NULL;

	if ((data == NULL || data->status == 0) && cs_http_shutdown_requested)
	{
		cs_http_answer(answer, 503, NULL,
					   "the server is shutting down; retry later", "shutting down");
		return;
	}
	if (data == NULL || data->status == 0)
	{
		cs_http_answer(answer, 503, NULL,
					   "the request could not be served (the listener is restarting or has no database connection); retry later",
					   "no worker");
		return;
	}
	answer->status = data->status;
	answer->body = pnstrdup(data->data + data->answer_off, data->answer_len);
	answer->note = data->note[0] ? pstrdup(data->note) : NULL;
}

/*-------------------------------------------------------------------------
 * In a database worker.
 *-------------------------------------------------------------------------
 */

static void
unpublish_worker(int code, Datum arg)
{
	CsHttpSlot *slot = &pool->slots[DatumGetInt32(arg)];

	SpinLockAcquire(&slot->mutex);
	slot->worker_latch = NULL;
	if (slot->state == CS_SLOT_IDLE)
		slot->state = CS_SLOT_EMPTY;
	else if (slot->state == CS_SLOT_ASSIGNED)
		slot->state = CS_SLOT_DONE; /* unanswered: the acceptor says 503 */
	SpinLockRelease(&slot->mutex);
	wake_acceptor();
}

/* Connected: take jobs from now on. */
void
cs_http_pool_worker_ready(int index)
{
	CsHttpSlot *slot = &pool->slots[index];

	SpinLockAcquire(&slot->mutex);
	slot->worker_latch = MyLatch;
	/* a DONE left by our predecessor stays until the acceptor takes it */
	if (slot->state == CS_SLOT_EMPTY)
		slot->state = CS_SLOT_IDLE;
	SpinLockRelease(&slot->mutex);
	before_shmem_exit(unpublish_worker, Int32GetDatum(index));
	wake_acceptor();
}

/* Write the answer into the job; one that does not fit becomes a 500. */
static void
put_answer(CsJobData *data, CsHttpAnswer *answer)
{
	CsHttpAnswer fallback;

	if (strlen(answer->body) + 1 > data->answer_space)
	{
		cs_http_answer(&fallback, 500, NULL,
					   "internal error; the detail is in the PostgreSQL server log",
					   "answer too large");
		ereport(LOG,
				(errmsg("cohortsync http: an answer of %zu bytes did not fit the job's %zu",
						strlen(answer->body), (size_t) data->answer_space)));
		answer = &fallback;
	}
	data->answer_len = strlen(answer->body);
	memcpy(data->data + data->answer_off, answer->body, data->answer_len + 1);
	strlcpy(data->note, answer->note ? answer->note : "", sizeof(data->note));
	data->status = answer->status;
}

/* The database work of one request, as the acceptor described it. */
static void
run_job(CsJobData *data)
{
	CsHttpAnswer answer;
	char	   *password = data->data + data->password_off;

	answer.status = 0;
	if (data->kind == CS_HTTP_JOB_INGEST && data->authenticate)
	{
		cs_http_authenticate(data->has_credentials ? data->data + data->username_off : NULL,
							 data->has_credentials ? password : NULL,
							 &answer);
		explicit_bzero(password, data->password_len);
	}
	if (answer.status == 0)
	{
		if (data->kind == CS_HTTP_JOB_HEALTH)
			cs_http_health(&answer);
		else
			cs_http_ingest(data->data + data->body_off, data->body_len, &answer);
	}
	put_answer(data, &answer);
}

/*
 * Serve the job in our slot, if there is one. Returns false if there was
 * none. Runs outside any transaction; allocations go to a context of the
 * caller's, which it resets.
 */
bool
cs_http_pool_worker_serve(int index)
{
	CsHttpSlot *slot = &pool->slots[index];
	dsm_handle	handle;
	dsm_segment *seg;

	SpinLockAcquire(&slot->mutex);
	if (slot->state != CS_SLOT_ASSIGNED)
	{
		SpinLockRelease(&slot->mutex);
		return false;
	}
	handle = slot->job;
	SpinLockRelease(&slot->mutex);

	/* NULL if the acceptor already let go of it (its client hung up) */
	seg = dsm_attach(handle);
	if (seg != NULL)
	{
		dsm_pin_mapping(seg);
		run_job(dsm_segment_address(seg));
		dsm_detach(seg);
	}

	SpinLockAcquire(&slot->mutex);
	slot->state = CS_SLOT_DONE;
	SpinLockRelease(&slot->mutex);
	wake_acceptor();
	return true;
}
