/*
 * eavctl rehearse: a failure rehearsal on a running system, for an
 * operator.  It kills workers of this host with SIGKILL (the busy ones
 * first) or arms an injection point, under whatever load is running,
 * waits until every interrupted step has been re-run or held, then prints
 * what happened and writes a postmortem draft (postmortems/000-template.md
 * headings) with the audit rows.  Judging is the database's job: the
 * figures come from the audit log, the verdict from eav.check_invariants.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"
#include "exitcode.h"
#include "inject.h"

#define RH_MAX_KILLS	1000
#define RH_POLL_MS	50
#define RH_NO_WORKER_MS	10000
#define RH_STOP		-1	/* no worker left to kill: report so far */

struct rehearsal {
	int		 nkills;
	int		 interval_ms;
	int		 wait_s;
	const char	*point;
	const char	*out;
	char		 outbuf[64];
	char		 mark[24];	/* audit id before the first fault */
	char		 started[40];
	char		 pids[RH_MAX_KILLS * 12 + 4];	/* int[] literal */
	char		 times[RH_MAX_KILLS * 40 + 4];	/* timestamptz[] */
};

static int	rh_args(struct rehearsal *, int, char **);
static int	rh_kill_one(struct ctl *, struct rehearsal *, int);
static int	rh_inject(struct ctl *, struct rehearsal *);
static int	rh_settle(struct ctl *, struct rehearsal *);
static int	rh_report(struct ctl *, struct rehearsal *);
static void	rh_now(char *, size_t);
static void	rh_sleep(int);
static void	rh_append(char *, size_t, const char *);

/* Now, as a timestamptz literal (the draft's start time). */
static void
rh_now(char *buf, size_t len)
{
	struct timespec	ts;
	struct tm	tm;
	char		sec[32];

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(sec, sizeof(sec), "%Y-%m-%d %H:%M:%S", &tm);
	snprintf(buf, len, "%.19s.%06d+00", sec,
	    (int)(ts.tv_nsec / 1000 % 1000000));
}

/* Pacing between faults and polls, never a wait for a condition. */
static void
rh_sleep(int ms)
{
	struct timespec	ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

/* Appends an element to a Postgres array literal ("{}" to start). */
static void
rh_append(char *arr, size_t size, const char *elem)
{
	size_t	len = strlen(arr);

	/* Sized for RH_MAX_KILLS elements: it cannot overflow. */
	snprintf(arr + len - 1, size - len + 1, "%s\"%s\"}",
	    len > 2 ? "," : "", elem);
}

/* Parses an option's integer in [lo, hi]; prints why not. */
static int
rh_int(const char *what, const char *s, int lo, int hi, int *out)
{
	char	*end;
	long	 v = strtol(s, &end, 10);

	if (*s == '\0' || *end != '\0' || v < lo || v > hi) {
		fprintf(stderr, "eavctl: %s must be an integer from %d to %d, "
		    "not \"%s\"\n", what, lo, hi, s);
		return -1;
	}
	*out = (int)v;
	return 0;
}

/* rehearse [-n kills] [-i interval_ms] [-p point] [-w wait_s] [-o file] */
static int
rh_args(struct rehearsal *rh, int argc, char **argv)
{
	struct tm	tm;
	time_t		now = time(NULL);
	char		err[256], spec[128];
	int		ch, r = 0;

	rh->nkills = 5;
	rh->interval_ms = 500;
	rh->wait_s = 120;
	while (r == 0 && (ch = getopt(argc, argv, "n:i:p:w:o:")) != -1) {
		if (ch == 'n')
			r = rh_int("kills", optarg, 1, RH_MAX_KILLS,
			    &rh->nkills);
		else if (ch == 'i')
			r = rh_int("interval", optarg, 0, 600000,
			    &rh->interval_ms);
		else if (ch == 'w')
			r = rh_int("wait", optarg, 1, 86400, &rh->wait_s);
		else if (ch == 'p')
			rh->point = optarg;
		else if (ch == 'o')
			rh->out = optarg;
		else
			return ctl_usage("rehearse");
	}
	if (r == -1)
		return EAV_EXIT_USAGE;
	if (argc != optind)
		return ctl_usage("rehearse");
	snprintf(spec, sizeof(spec), "%s=crash", rh->point ? rh->point : "");
	if (rh->point && inject_validate(spec, err, sizeof(err)) == -1) {
		fprintf(stderr, "eavctl: %s; nothing done\n", err);
		return EAV_EXIT_USAGE;
	}
	if (rh->out == NULL) {
		gmtime_r(&now, &tm);
		strftime(rh->outbuf, sizeof(rh->outbuf),
		    "rehearsal-%Y%m%d-%H%M%S.md", &tm);
		rh->out = rh->outbuf;
	}
	return 0;
}

/*
 * True if pid is an eav-worker whose parent is eavd's pid: eav.processes
 * lags behind the kernel, and a pid can be reused.
 */
static int
rh_is_worker(pid_t pid, pid_t eavd)
{
	char	 path[64], exe[512], buf[512], *p;
	FILE	*fp;
	ssize_t	 n;
	int	 ppid = -1;

	snprintf(path, sizeof(path), "/proc/%d/exe", (int)pid);
	if ((n = readlink(path, exe, sizeof(exe) - 1)) == -1)
		return 0;
	exe[n] = '\0';
	p = strrchr(exe, '/');
	if (strcmp(p ? p + 1 : exe, "eav-worker") != 0)
		return 0;
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if ((fp = fopen(path, "r")) == NULL)
		return 0;
	if (fgets(buf, sizeof(buf), fp) != NULL &&
	    (p = strrchr(buf, ')')) != NULL)
		(void)sscanf(p + 1, " %*c %d", &ppid);
	fclose(fp);
	return ppid == (int)eavd;
}

/*
 * Kills the busiest (else a random) worker of this host.  Returns 0, an
 * exit code, or RH_STOP when no worker comes up any more.
 */
static int
rh_kill_one(struct ctl *ctl, struct rehearsal *rh, int i)
{
	char		 host[256], when[40];
	const char	*params[1] = { host };
	PGresult	*res;
	pid_t		 pid, eavd;
	int		 r, waited;

	if (gethostname(host, sizeof(host)) == -1) {
		perror("eavctl: gethostname");
		return EAV_EXIT_FATAL;
	}
	host[sizeof(host) - 1] = '\0';
	/* Between kills every slot may be in its restart back-off. */
	for (waited = 0;; waited += RH_POLL_MS) {
		if ((r = ctl_call(ctl, DB_REHEARSE_VICTIM, params, &res)) != 0)
			return r;
		if (PQntuples(res) > 0)
			break;
		PQclear(res);
		if (waited >= RH_NO_WORKER_MS) {
			printf("no worker of this host (%s) came up within "
			    "%d s (a restart storm? see eavctl status); "
			    "stopping after %d kill(s)\n", host,
			    RH_NO_WORKER_MS / 1000, i);
			return RH_STOP;
		}
		rh_sleep(RH_POLL_MS);
	}
	pid = (pid_t)atoi(PQgetvalue(res, 0, 0));
	eavd = (pid_t)atoi(PQgetvalue(res, 0, 1));
	/* The server's clock, as the audit's: the latency needs one clock. */
	snprintf(when, sizeof(when), "%s", PQgetvalue(res, 0, 2));
	PQclear(res);
	if (!rh_is_worker(pid, eavd)) {
		printf("pid %d is no longer a worker of eavd %d; skipped\n",
		    (int)pid, (int)eavd);
		return 0;
	}
	if (kill(pid, SIGKILL) == -1) {
		fprintf(stderr, "eavctl: kill %d: %s\n", (int)pid,
		    strerror(errno));
		return errno == ESRCH ? 0 : EAV_EXIT_FATAL;
	}
	snprintf(host, sizeof(host), "%d", (int)pid);
	rh_append(rh->pids, sizeof(rh->pids), host);
	rh_append(rh->times, sizeof(rh->times), when);
	printf("kill %d/%d: SIGKILL worker pid %d at %s\n", i + 1,
	    rh->nkills, (int)pid, when);
	return 0;
}

/* Arms point to crash nkills times, waits for the firings, disarms. */
static int
rh_inject(struct ctl *ctl, struct rehearsal *rh)
{
	char		 count[16];
	const char	*arm[7] = { rh->point, "crash", "0", count, NULL, NULL,
			    ctl->actor };
	const char	*q[2] = { NULL, ctl->actor };
	PGresult	*res;
	char		 id[24];
	int		 r, waited = 0, fired = 0;

	snprintf(count, sizeof(count), "%d", rh->nkills);
	if ((r = ctl_call(ctl, DB_INJECT_ARM, arm, &res)) != 0)
		return r;
	snprintf(id, sizeof(id), "%s", PQgetvalue(res, 0, 0));
	PQclear(res);
	printf("injection %s armed: %s=crash,count=%d\n", id, rh->point,
	    rh->nkills);
	q[0] = id;
	while (fired < rh->nkills && waited < rh->wait_s * 1000) {
		rh_sleep(RH_POLL_MS);
		waited += RH_POLL_MS;
		if ((r = ctl_call(ctl, DB_REHEARSE_FIRED, q, &res)) != 0)
			break;
		fired = atoi(PQgetvalue(res, 0, 0));
		PQclear(res);
	}
	printf("injection %s fired %d time(s)\n", id, fired);
	/* Whatever happened above, a crash point must not stay armed. */
	if (ctl_call(ctl, DB_INJECT_DISARM, q, &res) == 0)
		PQclear(res);
	else
		fprintf(stderr, "eavctl: injection %s may still be armed: "
		    "eavctl inject disarm %s\n", id, id);
	return r;
}

/*
 * Waits until every killed worker was reaped and every step with an
 * unknown outcome since the mark is no longer pending or running (re-run
 * to its end, held, or failed).  0, or -1 at the deadline.
 */
static int
rh_settle(struct ctl *ctl, struct rehearsal *rh)
{
	const char	*params[2] = { rh->mark, rh->pids };
	PGresult	*res;
	int		 waited, left = -1;

	for (waited = 0; waited <= rh->wait_s * 1000; waited += RH_POLL_MS) {
		if (ctl_call(ctl, DB_REHEARSE_UNSETTLED, params, &res) != 0)
			return -1;
		left = atoi(PQgetvalue(res, 0, 0));
		PQclear(res);
		if (left == 0)
			return 0;
		rh_sleep(RH_POLL_MS);
	}
	fprintf(stderr, "eavctl: %d worker(s) or interrupted step(s) had not "
	    "settled after %d s\n", left, rh->wait_s);
	return -1;
}

/* The summary, from the audit log since the mark. */
static PGresult *
rh_summary(struct ctl *ctl, struct rehearsal *rh)
{
	const char	*params[3] = { rh->mark, rh->pids, rh->times };
	PGresult	*res;

	if (ctl_call(ctl, DB_REHEARSE_SUMMARY, params, &res) != 0)
		return NULL;
	return res;
}

/* The summary lines, to the terminal or (with "- ") to the draft. */
static void
rh_print_summary(FILE *fp, PGresult *s, const char *pre)
{
	fprintf(fp, "%sworkers killed:                 %s\n", pre,
	    PQgetvalue(s, 0, 0));
	fprintf(fp, "%sunknown outcomes recorded:      %s (%s sent back to "
	    "pending, %s held or cancelled)\n", pre, PQgetvalue(s, 0, 1),
	    PQgetvalue(s, 0, 2), PQgetvalue(s, 0, 3));
	fprintf(fp, "%sre-runs (claims after unknown): %s; those steps now "
	    "succeeded: %s\n", pre, PQgetvalue(s, 0, 4), PQgetvalue(s, 0, 5));
	fprintf(fp, "%sfence.rejected: %s; alarms raised: %s\n", pre,
	    PQgetvalue(s, 0, 6), PQgetvalue(s, 0, 7));
	fprintf(fp, "%skill -> unknown outcome (ms):   p50 %s, p99 %s, "
	    "max %s\n", pre, PQgetvalue(s, 0, 8), PQgetvalue(s, 0, 9),
	    PQgetvalue(s, 0, 10));
}

/* Rows as a Markdown table body, each cell as code. */
static void
rh_write_rows(FILE *fp, PGresult *res, int ncols)
{
	int	i, c;

	for (i = 0; i < PQntuples(res); i++) {
		fprintf(fp, "|");
		for (c = 0; c < ncols; c++)
			fprintf(fp, " `%s` |", PQgetvalue(res, i, c));
		fprintf(fp, "\n");
	}
}

/* Writes the postmortem draft; the operator completes the prose. */
static int
rh_write_draft(struct rehearsal *rh, PGresult *sum, PGresult *audit,
    PGresult *inv, int violated)
{
	FILE	*fp;

	if ((fp = fopen(rh->out, "w")) == NULL) {
		fprintf(stderr, "eavctl: %s: %s\n", rh->out, strerror(errno));
		return -1;
	}
	fprintf(fp, "# Postmortem: %s (rehearsal, draft)\n\n"
	    "- **Date** (UTC) and duration: from %s\n"
	    "- **Kind**: rehearsal (planned), `eavctl rehearse`\n"
	    "- **Failure mode(s)**: %s (docs/03-failure-modes.md)\n"
	    "- **Invariants at risk**: INV-1, INV-4, INV-5, INV-8\n\n",
	    rh->point ? rh->point : "workers killed with SIGKILL under load",
	    rh->started, rh->point ? "the FM of that point" : "FM-001, "
	    "FM-002");
	fprintf(fp, "## Summary\n\n");
	rh_print_summary(fp, sum, "- ");
	fprintf(fp, "\n## Impact\n\nSteps interrupted: %s; held for an "
	    "operator: %s (see Audit rows).  To be completed.\n\n"
	    "## Timeline\n\n| id | time (UTC) | type | outcome | actor | step "
	    "| payload |\n|---|---|---|---|---|---|---|\n",
	    PQgetvalue(sum, 0, 1), PQgetvalue(sum, 0, 3));
	rh_write_rows(fp, audit, 7);
	fprintf(fp, "\n## Detection\n\neavd reaped each killed worker "
	    "(`process.exited`) and recorded `tool_call.unknown` for its "
	    "running steps; kill -> unknown p50 %s ms, p99 %s ms.\n\n"
	    "## Response\n\nTo be completed: what eav did by itself, what the "
	    "operator did.\n\n## Recovery\n\n%s step(s) re-ran with their "
	    "idempotency keys; held steps wait for `eavctl resolve`.\n\n"
	    "## Audit rows\n\nThe timeline above lists them (at most 200): "
	    "`select * from eav.audit_events where id > %s`.\n\n"
	    "## Invariants after\n\n| invariant | violations | statement | "
	    "sample |\n|---|---|---|---|\n", PQgetvalue(sum, 0, 8),
	    PQgetvalue(sum, 0, 9), PQgetvalue(sum, 0, 5), rh->mark);
	rh_write_rows(fp, inv, 4);
	fprintf(fp, "\n%s\n\n## What changes\n\nTo be completed (\"none\" if "
	    "eav behaved as designed).\n", violated ? "**Violations found: "
	    "explain each.**" : "No violation.");
	if (fclose(fp) == EOF) {
		fprintf(stderr, "eavctl: %s: %s\n", rh->out, strerror(errno));
		return -1;
	}
	return 0;
}

/* Prints the summary and verdict and writes the draft. */
static int
rh_report(struct ctl *ctl, struct rehearsal *rh)
{
	const char	*mark[1] = { rh->mark }, *q[1] = { "false" };
	PGresult	*sum, *audit = NULL, *inv = NULL;
	int		 i, violated = 0, r = EAV_EXIT_FATAL;

	if ((sum = rh_summary(ctl, rh)) == NULL ||
	    ctl_call(ctl, DB_REHEARSE_AUDIT, mark, &audit) != 0 ||
	    ctl_call(ctl, DB_CHECK_INVARIANTS, q, &inv) != 0)
		goto out;
	for (i = 0; i < PQntuples(inv); i++)
		if (strcmp(PQgetvalue(inv, i, 1), "0") != 0)
			violated++;
	rh_print_summary(stdout, sum, "");
	printf("invariants: %d checked, %d violated%s\n", PQntuples(inv),
	    violated, violated ? " (eavctl check shows them)" : "");
	if (rh_write_draft(rh, sum, audit, inv, violated) == 0) {
		printf("postmortem draft: %s\n", rh->out);
		r = violated ? EAV_EXIT_VIOLATION : 0;
	}
out:
	PQclear(sum);
	PQclear(audit);
	PQclear(inv);
	return r;
}

/* eavctl rehearse [-n kills] [-i ms] [-p point] [-w s] [-o file] */
int
cmd_rehearse(struct ctl *ctl, int argc, char **argv)
{
	static struct rehearsal	 rh;
	PGresult		*res;
	int			 i, r;

	memset(&rh, 0, sizeof(rh));
	strcpy(rh.pids, "{}");
	strcpy(rh.times, "{}");
	if ((r = rh_args(&rh, argc, argv)) != 0)
		return r;
	if ((r = ctl_call(ctl, DB_REHEARSE_MARK, NULL, &res)) != 0)
		return r;
	snprintf(rh.mark, sizeof(rh.mark), "%s", PQgetvalue(res, 0, 0));
	PQclear(res);
	rh_now(rh.started, sizeof(rh.started));
	if (rh.point != NULL)
		r = rh_inject(ctl, &rh);
	else
		for (i = 0; i < rh.nkills && r == 0; i++) {
			if (i > 0)
				rh_sleep(rh.interval_ms);
			r = rh_kill_one(ctl, &rh, i);
		}
	if (r != 0 && r != RH_STOP)
		return r;
	printf("waiting for the interrupted steps to settle...\n");
	if (rh_settle(ctl, &rh) == -1)
		return EAV_EXIT_FATAL;
	return rh_report(ctl, &rh);
}
