/*-------------------------------------------------------------------------
 *
 * http_listener.c
 *	  The webhook HTTP listener: its settings, its acceptor (a background
 *	  worker), and the libmicrohttpd daemon the acceptor drives from its wait
 *	  loop.
 *
 * libmicrohttpd runs without threads of its own ("external polling"): it
 * only reads, writes and calls us back inside MHD_run(), which we call from
 * the acceptor's one thread when its epoll descriptor is readable or its
 * timeout is due. We wait on that descriptor with a WaitEventSet, together
 * with the latch and postmaster death, so SIGTERM, SIGHUP and the latch work
 * as in any other background worker, and PostgreSQL is only ever called from
 * the thread it knows.
 *
 * The acceptor never waits for the database: a request's database work goes
 * to one of cohortsync.http_workers database workers (http_pool.c,
 * http_worker.c), its connection is suspended meanwhile, and the worker's
 * answer wakes the acceptor through its latch. So a slow request (a lock
 * wait, a big swap, a slow client) holds up nothing but itself.
 *
 * The acceptor attaches to no database: the settings, TLS and the socket are
 * its alone, and DROP DATABASE concerns only the workers. It listens while
 * cohortsync.http_listen is set and at least one worker is connected, so
 * that while the database is missing nothing listens, as before.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>
#include <netdb.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "guc_common.h"
#include "http_common.h"
#include "http_listener.h"
#include "http_pool.h"
#include "pg_compat.h"
#include "worker_db.h"

/* Idle or stalled connections are closed after this many seconds. */
#define CS_HTTP_CONNECTION_TIMEOUT 60
/* More clients than this at once are refused. */
#define CS_HTTP_CONNECTION_LIMIT 128
/* After a failure to listen, try again this often (ms). */
#define CS_HTTP_RETRY_MS 10000
/* On shutdown, give answers already made this long to go out (ms). */
#define CS_HTTP_DRAIN_MS 2000

/* Settings */
char	   *cs_http_listen = NULL;
int			cs_http_max_body = 4 * 1024 * 1024;
char	   *cs_http_ssl_cert_file = NULL;
char	   *cs_http_ssl_key_file = NULL;
int			cs_http_log_level = LOG;
bool		cs_http_require_auth = true;
int			cs_http_workers = 4;

volatile sig_atomic_t cs_http_shutdown_requested = false;
bool		cs_http_daemon_stopping = false;
volatile sig_atomic_t cs_http_in_transaction = false;

static const struct config_enum_entry log_level_options[] = {
	{"off", CS_HTTP_LOG_OFF, false},
	{"debug5", DEBUG5, false},
	{"debug4", DEBUG4, false},
	{"debug3", DEBUG3, false},
	{"debug2", DEBUG2, false},
	{"debug1", DEBUG1, false},
	{"debug", DEBUG2, true},
	{"info", INFO, false},
	{"notice", NOTICE, false},
	{"warning", WARNING, false},
	{"log", LOG, false},
	{NULL, 0, false}
};

/* The running daemon, and the settings it was started with. */
static struct MHD_Daemon *daemon_handle = NULL;
static MemoryContext daemon_cxt = NULL;
static char *daemon_listen = NULL;
static char *daemon_cert_file = NULL;
static char *daemon_key_file = NULL;
static char *daemon_cert = NULL;	/* PEM text, when serving HTTPS */
static char *daemon_key = NULL;

static WaitEventSet *wait_set = NULL;
static uint32 wait_event_listener;	/* our waits, in pg_stat_activity */

/*
 * Split "host:port" (or "[v6-address]:port"). host "" and "*" mean every
 * IPv4 address. Returns false if spec is not of that form.
 */
static bool
split_listen(const char *spec, char **host, char **port)
{
	const char *p;

	if (spec[0] == '[')
	{
		const char *close = strchr(spec, ']');

		if (close == NULL || close[1] != ':')
			return false;
		*host = pnstrdup(spec + 1, close - spec - 1);
		p = close + 2;
	}
	else
	{
		const char *colon = strrchr(spec, ':');

		if (colon == NULL)
			return false;
		*host = pnstrdup(spec, colon - spec);
		if (strchr(*host, ':') != NULL)
			return false;		/* an IPv6 address needs brackets */
		p = colon + 1;
	}

	if (strlen(p) < 1 || strlen(p) > 5 || strspn(p, "0123456789") != strlen(p) ||
		atoi(p) < 1 || atoi(p) > 65535)
		return false;
	*port = pstrdup(p);
	if ((*host)[0] == '\0' || strcmp(*host, "*") == 0)
		*host = pstrdup("0.0.0.0");
	return true;
}

static bool
check_http_listen(char **newval, void **extra, GucSource source)
{
	char	   *host;
	char	   *port;

	if (**newval == '\0' || split_listen(*newval, &host, &port))
		return true;
	GUC_check_errdetail("Use host:port, for example 127.0.0.1:8787, [::1]:8787 or *:8787.");
	return false;
}

void
cs_http_listener_init(void)
{
	BackgroundWorker worker;

	cs_define_common_gucs();

	DefineCustomStringVariable("cohortsync.http_listen",
							   "Address and port of the webhook HTTP listener, as host:port.",
							   "Empty turns the listener off. Examples: 127.0.0.1:8787, [::1]:8787, *:8787.",
							   &cs_http_listen,
							   "",
							   PGC_SIGHUP,
							   0,
							   check_http_listen, NULL, NULL);

	DefineCustomIntVariable("cohortsync.http_max_body",
							"Largest webhook request body accepted.",
							"Larger bodies are answered 413. A page of 1000 members is well under 1 MB.",
							&cs_http_max_body,
							4 * 1024 * 1024,
							1024,
							MaxAllocSize / 4,	/* about jsonb's own limit */
							PGC_SIGHUP,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomStringVariable("cohortsync.http_ssl_cert_file",
							   "Certificate file (PEM) of the webhook listener; turns on HTTPS.",
							   "Set together with cohortsync.http_ssl_key_file. Relative paths are relative to the data directory.",
							   &cs_http_ssl_cert_file,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("cohortsync.http_ssl_key_file",
							   "Private key file (PEM) of the webhook listener.",
							   "Set together with cohortsync.http_ssl_cert_file. Relative paths are relative to the data directory.",
							   &cs_http_ssl_key_file,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomEnumVariable("cohortsync.http_log_level",
							 "Message level of the webhook listener's access log lines.",
							 "\"off\" writes none.",
							 &cs_http_log_level,
							 LOG,
							 log_level_options,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("cohortsync.http_require_auth",
							 "Whether webhook requests need Basic authentication.",
							 "Turn off only behind a proxy that authenticates them.",
							 &cs_http_require_auth,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	/* PGC_POSTMASTER: only while preloading (later it is a FATAL error) */
	if (!process_shared_preload_libraries_in_progress)
		return;

	DefineCustomIntVariable("cohortsync.http_workers",
							"Number of webhook requests served at once.",
							"Each is a background worker with its own database connection; "
							"a slow request holds up only its own.",
							&cs_http_workers,
							4,
							1,
							CS_HTTP_MAX_WORKERS,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	cs_http_pool_init();

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	/* on a hot standby too: it then answers 503, which a load balancer wants */
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "cohortsync");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "cs_http_acceptor_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, CS_HTTP_ACCEPTOR_NAME);
	snprintf(worker.bgw_type, BGW_MAXLEN, CS_HTTP_ACCEPTOR_NAME);
	cs_worker_register(&worker);

	snprintf(worker.bgw_function_name, BGW_MAXLEN, "cs_http_worker_main");
	snprintf(worker.bgw_type, BGW_MAXLEN, CS_HTTP_WORKER_NAME);
	for (int i = 0; i < cs_http_workers; i++)
	{
		snprintf(worker.bgw_name, BGW_MAXLEN, "%s %d", CS_HTTP_WORKER_NAME, i + 1);
		worker.bgw_main_arg = Int32GetDatum(i);
		cs_worker_register(&worker);
	}
}

/*
 * SIGTERM: stop taking requests and exit. A request whose transaction is
 * running (perhaps waiting for a lock) is cancelled, so that it ends soon and
 * answers 503, which Mixpanel retries.
 */
void
cs_http_handle_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	cs_http_shutdown_requested = true;
	if (cs_http_in_transaction)
	{
		QueryCancelPending = true;
		InterruptPending = true;
	}
	SetLatch(MyLatch);
	errno = save_errno;
}

/* libmicrohttpd's own messages (bind failures, TLS errors) */
static void pg_attribute_printf(2, 0)
mhd_log(void *cls, const char *fmt, va_list ap)
{
	char		buf[512];
	size_t		len;

	vsnprintf(buf, sizeof(buf), fmt, ap);
	len = strlen(buf);
	while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
		buf[--len] = '\0';
	ereport(LOG, (errmsg_internal("cohortsync http: libmicrohttpd: %s", buf)));
}

/*
 * libmicrohttpd's "cannot go on" (by default it aborts, which would restart
 * the whole server): end this process only; the postmaster starts it again.
 */
static void
mhd_panic(void *cls, const char *file, unsigned int line, const char *reason)
{
	ereport(FATAL,
			(errcode(ERRCODE_INTERNAL_ERROR),
			 errmsg("cohortsync http: libmicrohttpd failed at %s:%u: %s",
					file ? file : "?", line, reason ? reason : "?")));
}

static void
build_wait_set(int epoll_fd)
{
	if (wait_set != NULL)
		FreeWaitEventSet(wait_set);
	wait_set = cs_CreateWaitEventSet(TopMemoryContext, NULL, 3);
	AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	if (epoll_fd >= 0)
		AddWaitEventToSet(wait_set, WL_SOCKET_READABLE, epoll_fd, NULL, NULL);
}

/*
 * Read a PEM file whole; NULL (and a log line) if it cannot be read. A key
 * file must be private, with the same rule the server applies to its own
 * ssl_key_file.
 */
static char *
read_pem(const char *path, bool is_key)
{
	FILE	   *file;
	StringInfoData buf;
	char		chunk[4096];
	size_t		n;
	bool		failed;

	if (is_key)
	{
		struct stat st;

		if (stat(path, &st) != 0)
		{
			ereport(LOG,
					(errcode_for_file_access(),
					 errmsg("cohortsync http: could not access private key file \"%s\": %m",
							path)));
			return NULL;
		}
		if ((st.st_uid == geteuid() && (st.st_mode & (S_IRWXG | S_IRWXO))) ||
			(st.st_uid == 0 && (st.st_mode & (S_IWGRP | S_IXGRP | S_IRWXO))) ||
			(st.st_uid != geteuid() && st.st_uid != 0))
		{
			ereport(LOG,
					(errcode(ERRCODE_CONFIG_FILE_ERROR),
					 errmsg("cohortsync http: private key file \"%s\" has group or world access",
							path),
					 errdetail("File must have permissions u=rw (0600) or less if owned by the database user, or permissions u=rw,g=r (0640) or less if owned by root.")));
			return NULL;
		}
	}

	file = AllocateFile(path, "r");
	if (file == NULL)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("cohortsync http: could not open file \"%s\": %m", path)));
		return NULL;
	}
	initStringInfo(&buf);
	while ((n = fread(chunk, 1, sizeof(chunk), file)) > 0)
		appendBinaryStringInfo(&buf, chunk, n);
	explicit_bzero(chunk, sizeof(chunk));
	failed = ferror(file);
	FreeFile(file);
	if (failed)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("cohortsync http: could not read file \"%s\": %m", path)));
		return NULL;
	}
	return buf.data;
}

/* Forget the running daemon's settings; scrub the private key. */
static void
forget_daemon_settings(void)
{
	if (daemon_key != NULL)
		explicit_bzero(daemon_key, strlen(daemon_key));
	MemoryContextReset(daemon_cxt);
	daemon_listen = daemon_cert_file = daemon_key_file = NULL;
	daemon_cert = daemon_key = NULL;
}

static void
stop_daemon(void)
{
	if (daemon_handle == NULL)
		return;
	/*
	 * libmicrohttpd cannot stop with connections suspended: answer them
	 * (503), and give the answers one chance to go out.
	 */
	cs_http_daemon_stopping = true;
	cs_http_pool_fail_all();
	MHD_run(daemon_handle);
	MHD_stop_daemon(daemon_handle);
	cs_http_daemon_stopping = false;
	daemon_handle = NULL;
	build_wait_set(-1);
	forget_daemon_settings();
}

/* Start listening as the settings say; false (and a log line) on failure. */
static bool
start_daemon(void)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(daemon_cxt);
	unsigned int flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME;
	struct MHD_OptionItem tls[3];
	struct sockaddr_storage addr;
	struct addrinfo hints;
	struct addrinfo *res;
	char	   *host;
	char	   *port;
	int			rc;
	bool		use_tls;

	forget_daemon_settings();
	daemon_listen = pstrdup(cs_http_listen);
	daemon_cert_file = pstrdup(cs_http_ssl_cert_file);
	daemon_key_file = pstrdup(cs_http_ssl_key_file);
	if (!split_listen(daemon_listen, &host, &port))
	{
		MemoryContextSwitchTo(oldcxt);
		return false;			/* the check hook makes this unreachable */
	}
	MemoryContextSwitchTo(oldcxt);
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0 || res == NULL)
	{
		ereport(LOG,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("cohortsync http: could not resolve \"%s\" of cohortsync.http_listen: %s",
						host, gai_strerror(rc))));
		return false;
	}
	memset(&addr, 0, sizeof(addr));
	memcpy(&addr, res->ai_addr, Min(res->ai_addrlen, sizeof(addr)));
	freeaddrinfo(res);
	if (addr.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;

	use_tls = daemon_cert_file[0] != '\0' || daemon_key_file[0] != '\0';
	memset(tls, 0, sizeof(tls));	/* MHD_OPTION_END: no TLS options */
	if (use_tls)
	{
		if (daemon_cert_file[0] == '\0' || daemon_key_file[0] == '\0')
		{
			/* refuse to listen rather than fall back to plain HTTP */
			ereport(LOG,
					(errcode(ERRCODE_CONFIG_FILE_ERROR),
					 errmsg("cohortsync http: cohortsync.http_ssl_cert_file and cohortsync.http_ssl_key_file must be set together"),
					 errdetail("The listener does not listen until they are.")));
			return false;
		}
		oldcxt = MemoryContextSwitchTo(daemon_cxt);
		daemon_cert = read_pem(daemon_cert_file, false);
		daemon_key = read_pem(daemon_key_file, true);
		MemoryContextSwitchTo(oldcxt);
		if (daemon_cert == NULL || daemon_key == NULL)
			return false;

		flags |= MHD_USE_TLS;
		tls[0].option = MHD_OPTION_HTTPS_MEM_KEY;
		tls[0].value = 0;
		tls[0].ptr_value = daemon_key;
		tls[1].option = MHD_OPTION_HTTPS_MEM_CERT;
		tls[1].value = 0;
		tls[1].ptr_value = daemon_cert;
	}

	/* the port is also in addr; passing it makes libmicrohttpd's messages right */
	daemon_handle = MHD_start_daemon(flags, (uint16_t) atoi(port),
									 NULL, NULL,
									 cs_http_handle_request, NULL,
									 /* first, so that it gets every message */
									 MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
									 MHD_OPTION_SOCK_ADDR, (struct sockaddr *) &addr,
									 MHD_OPTION_NOTIFY_COMPLETED, cs_http_request_completed, NULL,
									 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int) CS_HTTP_CONNECTION_TIMEOUT,
									 MHD_OPTION_CONNECTION_LIMIT, (unsigned int) CS_HTTP_CONNECTION_LIMIT,
									 MHD_OPTION_ARRAY, tls,
									 MHD_OPTION_END);
	if (daemon_handle == NULL)
	{
		ereport(LOG,
				(errmsg("cohortsync http: could not listen on %s", daemon_listen),
				 errhint("libmicrohttpd's message above says why; retrying every %d seconds.",
						 CS_HTTP_RETRY_MS / 1000)));
		return false;
	}

	build_wait_set(MHD_get_daemon_info(daemon_handle, MHD_DAEMON_INFO_EPOLL_FD)->epoll_fd);

	ereport(LOG,
			(errmsg("cohortsync http: listening on %s (%s) for database \"%s\", %d workers",
					daemon_listen, use_tls ? "HTTPS" : "HTTP", cs_database, cs_http_workers)));
	if (!cs_http_require_auth)
		ereport(WARNING,
				(errmsg("cohortsync http: cohortsync.http_require_auth is off: webhook requests are not authenticated")));
	return true;
}

/* Do the settings (or the certificate files) differ from the daemon's? */
static bool
settings_changed(void)
{
	bool		changed;

	if (strcmp(cs_http_listen, daemon_listen) != 0 ||
		strcmp(cs_http_ssl_cert_file, daemon_cert_file) != 0 ||
		strcmp(cs_http_ssl_key_file, daemon_key_file) != 0)
		return true;
	if (daemon_cert == NULL)
		return false;

	/* same file names: a renewed certificate must still be picked up */
	{
		char	   *cert = read_pem(daemon_cert_file, false);
		char	   *key = read_pem(daemon_key_file, true);

		changed = cert == NULL || key == NULL ||
			strcmp(cert, daemon_cert) != 0 || strcmp(key, daemon_key) != 0;
		if (cert != NULL)
			pfree(cert);
		if (key != NULL)
		{
			explicit_bzero(key, strlen(key));
			pfree(key);
		}
	}
	return changed;
}

/* Connections libmicrohttpd has open now. */
static unsigned int
open_connections(void)
{
	const union MHD_DaemonInfo *info;

	info = MHD_get_daemon_info(daemon_handle, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
	return info != NULL ? info->num_connections : 0;
}

/* Wait for daemon events, the latch, or timeout_ms (-1: no timeout). */
static void
wait_for_events(long timeout_ms)
{
	WaitEvent	event;

	if (daemon_handle != NULL)
	{
		MHD_UNSIGNED_LONG_LONG mhd_timeout;

		if (MHD_get_timeout(daemon_handle, &mhd_timeout) == MHD_YES &&
			(timeout_ms < 0 || mhd_timeout < (MHD_UNSIGNED_LONG_LONG) timeout_ms))
			timeout_ms = (long) Min(mhd_timeout, (MHD_UNSIGNED_LONG_LONG) INT_MAX);
	}

	(void) WaitEventSetWait(wait_set, timeout_ms, &event, 1, wait_event_listener);
	ResetLatch(MyLatch);

	/*
	 * A cancel (pg_cancel_backend) that arrives between requests has nothing
	 * to cancel; drop it, as a backend idle at its prompt does, rather than
	 * let it fail the next request.
	 */
	QueryCancelPending = false;
	CHECK_FOR_INTERRUPTS();

	/* answers from the workers resume their connections; queued jobs go out */
	cs_http_pool_poll();

	if (daemon_handle != NULL)
	{
		unsigned int before = open_connections();

		MHD_run(daemon_handle);

		/*
		 * libmicrohttpd (0.9.75, epoll) takes the listening socket out of its
		 * epoll set while CS_HTTP_CONNECTION_LIMIT connections are open, and
		 * puts it back only at the start of an MHD_run(). When this run closed
		 * connections, nothing else would wake us for that next run: new
		 * connections waited in the backlog for ever, and one client that
		 * opened 129 connections at once stopped the listener for good. One
		 * more run puts the socket back (and costs an epoll_wait() of 0 ms).
		 */
		if (open_connections() < before)
			MHD_run(daemon_handle);
	}
}

/*
 * Shutting down: stop accepting connections, let answers already made go
 * out (requests still arriving are answered 503), then stop.
 */
static void
drain_and_stop(void)
{
	TimestampTz deadline;
	MHD_socket	listen_fd;

	if (daemon_handle == NULL)
		return;
	listen_fd = MHD_quiesce_daemon(daemon_handle);
	if (listen_fd != MHD_INVALID_SOCKET)
		close(listen_fd);

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), CS_HTTP_DRAIN_MS);
	for (;;)
	{
		const union MHD_DaemonInfo *info;
		long		secs;
		int			usecs;

		info = MHD_get_daemon_info(daemon_handle, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
		if (info == NULL || info->num_connections == 0 ||
			GetCurrentTimestamp() >= deadline)
			break;
		TimestampDifference(GetCurrentTimestamp(), deadline, &secs, &usecs);
		wait_for_events(secs * 1000 + usecs / 1000 + 1);
	}
	stop_daemon();
}

/* Should the daemon run? Logs when it stops for want of workers. */
static bool
want_daemon(void)
{
	static bool logged_no_workers = false;

	if (cs_http_listen[0] == '\0')
	{
		if (daemon_handle != NULL)
			ereport(LOG,
					(errmsg("cohortsync http: cohortsync.http_listen is empty, stopped listening")));
		return false;
	}
	if (cs_http_pool_workers() == 0)
	{
		/* at start this is the usual moment before the workers connect */
		if (daemon_handle != NULL && !logged_no_workers)
			ereport(LOG,
					(errmsg("cohortsync http: no listener worker is connected to database \"%s\", stopped listening",
							cs_database),
					 errdetail("Listening resumes when a worker is connected again.")));
		logged_no_workers = daemon_handle != NULL;
		return false;
	}
	logged_no_workers = false;
	return true;
}

void
cs_http_acceptor_main(Datum main_arg)
{
	TimestampTz retry_at = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, cs_http_handle_sigterm);
	/* a client that hangs up must not kill us; libmicrohttpd expects this */
	pqsignal(SIGPIPE, SIG_IGN);
	BackgroundWorkerUnblockSignals();

	/* attached to no database: DROP DATABASE is the workers' business */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname(CS_HTTP_ACCEPTOR_NAME);
	pgstat_report_activity(STATE_IDLE, NULL);
	cs_http_pool_acceptor_start();
	MHD_set_panic_func(mhd_panic, NULL);

	daemon_cxt = AllocSetContextCreate(TopMemoryContext, CS_HTTP_ACCEPTOR_NAME,
									   ALLOCSET_SMALL_SIZES);
	build_wait_set(-1);
	wait_event_listener = cs_wait_event_new("CohortsyncHttpListener");

	while (!cs_http_shutdown_requested)
	{
		long		timeout_ms = -1;

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			if (daemon_handle != NULL && settings_changed())
			{
				ereport(LOG,
						(errmsg("cohortsync http: settings changed, restarting the listener")));
				stop_daemon();
			}
			retry_at = 0;
		}

		if (!want_daemon())
			stop_daemon();
		else if (daemon_handle == NULL)
		{
			TimestampTz now = GetCurrentTimestamp();

			if (now >= retry_at && !start_daemon())
				retry_at = TimestampTzPlusMilliseconds(now, CS_HTTP_RETRY_MS);
			if (daemon_handle == NULL)
				timeout_ms = CS_HTTP_RETRY_MS;
		}

		wait_for_events(timeout_ms);
	}

	drain_and_stop();
	ereport(LOG, (errmsg("cohortsync http: listener shutting down")));

	/*
	 * Exit code 1, so that the postmaster starts the listener again if it was
	 * stopped by pg_terminate_backend(); at server shutdown nothing restarts.
	 */
	proc_exit(1);
}
