/*
 * Nemeses, and eavd's keeper.  The orchestrator starts eavd the way
 * systemd would (restarting it when it dies) in a session of its own, so
 * that every process eav leaves behind can be found afterwards.  Faults
 * run one at a time, each logged with CLOCK_MONOTONIC and CLOCK_REALTIME
 * timestamps (the realtime one is what audit rows are compared with) and
 * the pid or steps it hit:
 *
 *   worker SIGKILL every kill_min..kill_max ms, 80 % aimed at a worker
 *   that owns a running step; eavd SIGKILL then restart; pg_ctl stop -m
 *   fast / -m immediate then start; SIGKILL of a worker's PostgreSQL
 *   backend (the postmaster then restarts every session); SIGSTOP of a
 *   worker for stop_ms, then SIGCONT.
 *
 * Every pid is checked in /proc before a signal goes to it: pids are
 * reused, and this machine runs other people's processes too.
 */
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "soak.h"
#include "xalloc.h"

#define RESTART_SEC_MS	100	/* systemd's default RestartSec */
#define PG_OUTAGE_MS	1000
#define MAX_VICTIMS	64

struct victim {
	pid_t		 pid;
	long long	 incarnation;
	int		 nrunning;
	char		 running[512];	/* "{id,id,...}" */
};

struct fault {
	int64_t		 at;
	enum fault_kind	 kind;
};

static const char *const fault_names[F_NKINDS] = { "pg_fast_restart",
    "pg_immediate_restart", "backend_kill", "supervisor_kill", "sigstop" };

static void	eavd_exec(struct soak *, int, pid_t)
		    __attribute__((noreturn));
static int	pg_ctl(struct soak *, const char *, const char *);
static int	wait_db(struct soak *, int);
static void	diagnose_workers(struct soak *);
static double	wait_workers_db(struct soak *, int);
static int	victims(struct soak *, struct victim *, int);
static json_t	*running_json(const char *);
static int	ours(struct soak *, pid_t);
static void	kill_worker(struct soak *);
static int	fault_pg(struct soak *, const char *);
static int	fault_backend(struct soak *);
static int	fault_supervisor(struct soak *);
static int	fault_stop(struct soak *);
static void	fault_window(struct soak *, double, double);
static int	fault_run(struct soak *, enum fault_kind);
static int	plan_faults(struct soak *, struct fault *, int64_t);

/* Adds the timestamps a record lacks and appends it to nemesis.jsonl. */
void
nemesis_log(struct soak *s, json_t *o)
{
	if (o == NULL)
		fatalx("json_pack");
	if (json_object_get(o, "mono") == NULL)
		json_object_set_new(o, "mono", json_real(since_s(s->mono0)));
	if (json_object_get(o, "real") == NULL)
		json_object_set_new(o, "real", json_real(real_s()));
	jl_write(s->nem, o);
}

/* The child side of eavd_start: a session of its own, then eavd. */
static void
eavd_exec(struct soak *s, int logfd, pid_t parent)
{
	char			 path[PATH_MAX];
	char			*argv[] = { path, "-f", s->conf, NULL };
	struct sigaction	 sa;
	sigset_t		 none;
	int			 sig, null;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_DFL;
	for (sig = 1; sig < NSIG; sig++)
		(void)sigaction(sig, &sa, NULL);
	sigemptyset(&none);
	snprintf(path, sizeof(path), "%s/eavd", s->bindir);
	if (sigprocmask(SIG_SETMASK, &none, NULL) == -1 || setsid() == -1 ||
	    prctl(PR_SET_PDEATHSIG, SIGKILL) == -1 || getppid() != parent)
		_exit(127);
	if ((null = open("/dev/null", O_RDONLY)) == -1 ||
	    dup2(null, STDIN_FILENO) == -1 ||
	    dup2(logfd, STDOUT_FILENO) == -1 ||
	    dup2(logfd, STDERR_FILENO) == -1)
		_exit(127);
	closefrom(3);
	execv(path, argv);
	_exit(127);
}

/*
 * Starts eavd, as systemd would, with its log appended to eavd.log.  It
 * gets SIGKILL if the orchestrator dies, and its children follow it.
 */
void
eavd_start(struct soak *s)
{
	char	 log[PATH_MAX], pidf[PATH_MAX];
	sigset_t all, old;
	pid_t	 pid, parent = getpid();
	FILE	*fp;
	int	 fd;

	snprintf(log, sizeof(log), "%s/eavd.log", s->dir);
	fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd == -1)
		fatal("%s", log);
	sigfillset(&all);
	if (sigprocmask(SIG_BLOCK, &all, &old) == -1)
		fatal("sigprocmask");
	if ((pid = fork()) == 0)
		eavd_exec(s, fd, parent);
	if (sigprocmask(SIG_SETMASK, &old, NULL) == -1)
		fatal("sigprocmask");
	if (pid == -1)
		fatal("fork");
	close(fd);
	s->eavd = pid;
	if (s->neavd < (int)(sizeof(s->eavd_pids) / sizeof(s->eavd_pids[0])))
		s->eavd_pids[s->neavd++] = pid;
	snprintf(pidf, sizeof(pidf), "%s/eavd.pid", s->dir);
	if ((fp = fopen(pidf, "w")) == NULL || fprintf(fp, "%d\n",
	    (int)pid) < 0 || fclose(fp) == EOF)
		fatal("%s", pidf);
	nemesis_log(s, json_pack("{s:s, s:i}", "type", "eavd_started", "pid",
	    (int)pid));
}

/*
 * Restarts eavd if it died on its own (Restart=always); returns 1 then.
 * The nemeses reap the eavd they kill themselves.
 */
int
eavd_poll(struct soak *s)
{
	int	status;
	pid_t	r;

	if (s->eavd == 0)
		return 0;
	if ((r = waitpid(s->eavd, &status, WNOHANG)) == 0)
		return 0;
	if (r == -1)
		fatal("waitpid eavd");
	nemesis_log(s, json_pack("{s:s, s:i, s:i, s:b}", "type",
	    "eavd_exited", "pid", (int)s->eavd, "status", status,
	    "unexpected", 1));
	s->eavd_unexpected++;
	s->eavd = 0;
	pause_ms(RESTART_SEC_MS);
	eavd_start(s);
	return 1;
}

/* Polls until the current eavd has every child up; 1, or 0 at deadline. */
int
eavd_wait_up(struct soak *s, int timeout_ms)
{
	int64_t		 end = mono_ns() + (int64_t)timeout_ms * 1000000;
	char		 pid[16], want[16];
	long long	 ok;

	snprintf(want, sizeof(want), "%d", s->p.workers + 1);
	while (mono_ns() < end) {
		(void)eavd_poll(s);
		snprintf(pid, sizeof(pid), "%d", (int)s->eavd);
		if (obs_ll(&s->obs, &ok, "SELECT (count(*) = $3::int)::int "
		    "FROM eav.proj_processes p JOIN eav.nodes n ON n.name = "
		    "p.node WHERE p.node = $1 AND n.pid = $2::int AND p.state "
		    "= 'up' AND p.pid IS NOT NULL", 3, s->node, pid,
		    want) == 0 && ok)
			return 1;
		pause_ms(20);
	}
	return 0;
}

/* SIGTERM, then SIGKILL after 30 s; returns the wait status or -1. */
int
eavd_stop(struct soak *s)
{
	int64_t	end = mono_ns() + 30000000000LL;
	int	status;
	pid_t	r;

	if (s->eavd == 0)
		return -1;
	if (kill(s->eavd, SIGTERM) == -1)
		fatal("kill eavd");
	nemesis_log(s, json_pack("{s:s, s:i}", "type", "eavd_sigterm", "pid",
	    (int)s->eavd));
	while ((r = waitpid(s->eavd, &status, WNOHANG)) == 0 &&
	    mono_ns() < end)
		pause_ms(10);
	if (r == -1)
		fatal("waitpid eavd");
	if (r == 0) {
		(void)kill(s->eavd, SIGKILL);
		if (waitpid(s->eavd, &status, 0) == -1)
			fatal("waitpid eavd");
		status = -1;
	}
	nemesis_log(s, json_pack("{s:s, s:i, s:i}", "type", "eavd_stopped",
	    "pid", (int)s->eavd, "status", status));
	s->eavd = 0;
	return status;
}

/* Runs pg_ctl (as postgres when root); returns its exit code or -1. */
static int
pg_ctl(struct soak *s, const char *what, const char *mode)
{
	char	 pgctl[PATH_MAX], log[PATH_MAX], m[16], w[16], *argv[20];
	char	*bin = getenv("PGBIN");
	int	 n = 0, status;

	snprintf(pgctl, sizeof(pgctl), "%s/pg_ctl",
	    bin ? bin : "/usr/lib/postgresql/15/bin");
	snprintf(log, sizeof(log), "%s/pg_ctl.log", s->dir);
	if (s->as_postgres) {
		argv[n++] = "/usr/sbin/runuser";
		argv[n++] = "-u";
		argv[n++] = "postgres";
		argv[n++] = "--";
	}
	argv[n++] = pgctl;
	argv[n++] = "-D";
	argv[n++] = s->pgdata;
	if (strcmp(what, "stop") == 0) {
		snprintf(m, sizeof(m), "%s", mode);
		argv[n++] = "-m";
		argv[n++] = m;
	} else if (strcmp(what, "start") == 0) {
		argv[n++] = "-l";
		argv[n++] = s->pglog;
	}
	if (strcmp(what, "status") != 0) {
		argv[n++] = "-w";
		argv[n++] = "-t";
		argv[n++] = "60";
	}
	snprintf(w, sizeof(w), "%s", what);
	argv[n++] = w;
	argv[n] = NULL;
	status = run_wait(argv, log);
	return status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int
pg_running(struct soak *s)
{
	return pg_ctl(s, "status", NULL) == 0;
}

/* Polls until the database answers; 1, or 0 at the deadline. */
static int
wait_db(struct soak *s, int timeout_ms)
{
	int64_t		end = mono_ns() + (int64_t)timeout_ms * 1000000;
	long long	one;

	while (mono_ns() < end) {
		if (obs_ll(&s->obs, &one, "SELECT 1", 0) == 0)
			return 1;
		pause_ms(20);
	}
	return 0;
}

/*
 * When workers do not come back, records what each one is doing: its
 * state, where it sleeps in the kernel, and whether it has a session.
 */
static void
diagnose_workers(struct soak *s)
{
	PGresult	*res;
	json_t		*a = json_array(), *o;
	char		 path[64], wchan[64], comm[64], st;
	pid_t		 pid, ppid, sid;
	FILE		*fp;
	int		 i;

	res = obs_q(&s->obs, "SELECT p.pid, p.state, EXISTS (SELECT 1 FROM "
	    "pg_stat_activity a WHERE a.application_name = 'eav-worker:' || "
	    "p.incarnation || ':' || p.pid) FROM eav.proj_processes p WHERE "
	    "p.node = $1 AND p.kind = 'worker' ORDER BY p.slot", 1, s->node);
	for (i = 0; res != NULL && a != NULL && i < PQntuples(res); i++) {
		pid = atoi(PQgetvalue(res, i, 0));
		wchan[0] = '\0';
		snprintf(path, sizeof(path), "/proc/%d/wchan", (int)pid);
		if ((fp = fopen(path, "r")) != NULL) {
			if (fgets(wchan, sizeof(wchan), fp) == NULL)
				wchan[0] = '\0';
			fclose(fp);
		}
		if (proc_info(pid, comm, sizeof(comm), &st, &ppid, &sid) == -1)
			st = '?';
		o = json_pack("{s:i, s:s, s:s#, s:s, s:b}", "pid", (int)pid,
		    "slot_state", PQgetvalue(res, i, 1), "proc_state", &st, 1,
		    "wchan", wchan, "session",
		    strcmp(PQgetvalue(res, i, 2), "t") == 0);
		json_array_append_new(a, o);
	}
	PQclear(res);
	nemesis_log(s, json_pack("{s:s, s:o}", "type", "workers_not_back",
	    "workers", a));
}

/*
 * Polls until every worker slot of the current eavd is up with a live
 * database session; returns the milliseconds it took, or -1.
 */
static double
wait_workers_db(struct soak *s, int timeout_ms)
{
	int64_t		 t0 = mono_ns();
	int64_t		 end = t0 + (int64_t)timeout_ms * 1000000;
	char		 want[16];
	long long	 ok;

	snprintf(want, sizeof(want), "%d", s->p.workers);
	while (mono_ns() < end) {
		(void)eavd_poll(s);
		if (obs_ll(&s->obs, &ok, "SELECT (count(*) = $2::int)::int "
		    "FROM eav.proj_processes p WHERE p.node = $1 AND p.kind = "
		    "'worker' AND p.state = 'up' AND EXISTS (SELECT 1 FROM "
		    "pg_stat_activity a WHERE a.application_name = "
		    "'eav-worker:' || p.incarnation || ':' || p.pid)", 2,
		    s->node, want) == 0 && ok)
			return (double)(mono_ns() - t0) / 1e6;
		pause_ms(20);
	}
	diagnose_workers(s);
	return -1;
}

/* The up workers of the current eavd with their running steps. */
static int
victims(struct soak *s, struct victim *v, int max)
{
	PGresult	*res;
	const char	*p;
	int		 i, n;

	res = obs_q(&s->obs, "SELECT p.pid, p.incarnation, (SELECT "
	    "array_agg(st.id ORDER BY st.id) FROM eav.steps st WHERE "
	    "st.state = 'running' AND st.owner_incarnation = p.incarnation "
	    "AND st.owner_pid = p.pid) FROM eav.proj_processes p WHERE "
	    "p.node = $1 AND p.kind = 'worker' AND p.state = 'up' AND p.pid "
	    "IS NOT NULL ORDER BY p.slot", 1, s->node);
	if (res == NULL)
		return -1;
	n = PQntuples(res) < max ? PQntuples(res) : max;
	for (i = 0; i < n; i++) {
		v[i].pid = atoi(PQgetvalue(res, i, 0));
		v[i].incarnation = strtoll(PQgetvalue(res, i, 1), NULL, 10);
		snprintf(v[i].running, sizeof(v[i].running), "%s",
		    PQgetisnull(res, i, 2) ? "{}" : PQgetvalue(res, i, 2));
		v[i].nrunning = PQgetisnull(res, i, 2) ? 0 : 1;
		for (p = v[i].running; *p != '\0'; p++)
			v[i].nrunning += *p == ',';
	}
	PQclear(res);
	return n;
}

/* "{1,2,3}" as a JSON array of integers. */
static json_t *
running_json(const char *text)
{
	json_t		*a = json_array();
	const char	*p = text;
	char		*end;
	long long	 id;

	while (a != NULL && *p != '\0') {
		if (*p < '0' || *p > '9') {
			p++;
			continue;
		}
		id = strtoll(p, &end, 10);
		json_array_append_new(a, json_integer(id));
		p = end;
	}
	return a;
}

/* True if pid is an eav-worker child of the current eavd. */
static int
ours(struct soak *s, pid_t pid)
{
	char	comm[64], st;
	pid_t	ppid, sid;

	return pid > 0 && proc_info(pid, comm, sizeof(comm), &st, &ppid,
	    &sid) == 0 && ppid == s->eavd && strcmp(comm, "eav-worker") == 0;
}

static void
kill_worker(struct soak *s)
{
	struct victim	 v[MAX_VICTIMS], *c[MAX_VICTIMS];
	struct kill_rec	*k;
	int		 n, i, nc = 0, aimed, hit = 0;
	double		 real;
	int64_t		 mono;

	if ((n = victims(s, v, MAX_VICTIMS)) <= 0)
		return;
	aimed = rng_range(&s->rng, 1, 100) <= 80;
	for (i = 0; aimed && i < n; i++)
		if (v[i].nrunning > 0 && v[i].pid != s->stopped)
			c[nc++] = &v[i];
	hit = nc > 0;
	for (i = 0; nc == 0 && i < n; i++)
		if (v[i].pid != s->stopped)
			c[nc++] = &v[i];
	if (nc == 0)
		return;
	i = rng_range(&s->rng, 0, nc - 1);
	if (!ours(s, c[i]->pid))
		return;
	mono = mono_ns();
	real = real_s();
	if (kill(c[i]->pid, SIGKILL) == -1) {
		log_warn("kill %d", (int)c[i]->pid);
		return;
	}
	if (s->nkills == s->kills_cap) {
		s->kills_cap = s->kills_cap * 2 + 256;
		s->kills = xreallocarray(s->kills, (size_t)s->kills_cap,
		    sizeof(*s->kills));
	}
	k = &s->kills[s->nkills++];
	k->pid = c[i]->pid;
	k->incarnation = c[i]->incarnation;
	k->real = real;
	k->running = c[i]->nrunning;
	s->aimed += aimed;
	s->aimed_hit += aimed && hit;
	nemesis_log(s, json_pack("{s:s, s:i, s:I, s:b, s:b, s:o, s:f, s:f}",
	    "type", "kill_worker", "pid", (int)k->pid, "incarnation",
	    (json_int_t)k->incarnation, "aimed", aimed, "aimed_hit",
	    aimed && hit, "running", running_json(c[i]->running), "mono",
	    (double)(mono - s->mono0) / 1e9, "real", real));
}

/* Stops PostgreSQL in the given mode, keeps it down a moment, starts it. */
static int
fault_pg(struct soak *s, const char *mode)
{
	double	up, ms;
	int	stop, start;

	nemesis_log(s, json_pack("{s:s, s:s}", "type", "pg_stop", "mode",
	    mode));
	stop = pg_ctl(s, "stop", mode);
	nemesis_log(s, json_pack("{s:s, s:s, s:i}", "type", "pg_stopped",
	    "mode", mode, "rc", stop));
	obs_close(&s->obs);
	pause_ms(PG_OUTAGE_MS);
	start = pg_ctl(s, "start", NULL);
	up = real_s();
	nemesis_log(s, json_pack("{s:s, s:i}", "type", "pg_started", "rc",
	    start));
	if (!wait_db(s, 60000))
		return 0;
	ms = wait_workers_db(s, 15000);
	nemesis_log(s, json_pack("{s:s, s:f}", "type", "pg_workers_back",
	    "ms", ms));
	if (s->npg_up < (int)(sizeof(s->pg_up_ms) / sizeof(s->pg_up_ms[0]))) {
		s->pg_up_real[s->npg_up] = up;
		s->pg_up_ms[s->npg_up++] = ms;
	}
	return stop == 0 && start == 0;
}

/*
 * SIGKILL of one worker's backend: the postmaster ends every session and
 * runs crash recovery (P1).  Workers must reconnect, not die.
 */
static int
fault_backend(struct soak *s)
{
	PGresult	*res;
	char		 comm[64], app[128], st;
	pid_t		 pid, ppid, sid, pm = postmaster_pid(s->pgdata);
	int64_t		 end;
	double		 up, ms;
	int		 i;

	res = obs_q(&s->obs, "SELECT pid, application_name FROM "
	    "pg_stat_activity WHERE datname = current_database() AND "
	    "application_name LIKE 'eav-worker:%' ORDER BY pid", 0);
	if (res == NULL || PQntuples(res) == 0) {
		PQclear(res);
		return 0;
	}
	i = rng_range(&s->rng, 0, PQntuples(res) - 1);
	pid = atoi(PQgetvalue(res, i, 0));
	snprintf(app, sizeof(app), "%s", PQgetvalue(res, i, 1));
	PQclear(res);
	if (proc_info(pid, comm, sizeof(comm), &st, &ppid, &sid) == -1 ||
	    ppid != pm || kill(pid, SIGKILL) == -1)
		return 0;
	nemesis_log(s, json_pack("{s:s, s:i, s:s}", "type", "kill_backend",
	    "pid", (int)pid, "application_name", app));
	/* Our own session ends in the restart: that is the sign it began. */
	end = mono_ns() + 10000000000LL;
	while ((res = obs_q(&s->obs, "SELECT 1", 0)) != NULL &&
	    mono_ns() < end) {
		PQclear(res);
		pause_ms(5);
	}
	PQclear(res);
	if (!wait_db(s, 60000))
		return 0;
	up = real_s();
	ms = wait_workers_db(s, 15000);
	nemesis_log(s, json_pack("{s:s, s:f}", "type", "pg_workers_back",
	    "ms", ms));
	if (s->npg_up < (int)(sizeof(s->pg_up_ms) / sizeof(s->pg_up_ms[0]))) {
		s->pg_up_real[s->npg_up] = up;
		s->pg_up_ms[s->npg_up++] = ms;
	}
	return 1;
}

/* SIGKILL of eavd, then a restart after RestartSec, as systemd does. */
static int
fault_supervisor(struct soak *s)
{
	char	comm[64], st;
	pid_t	old = s->eavd, ppid, sid;
	double	real;
	int	status, up;

	if (old == 0 || proc_info(old, comm, sizeof(comm), &st, &ppid,
	    &sid) == -1 || strcmp(comm, "eavd") != 0)
		return 0;
	real = real_s();
	if (kill(old, SIGKILL) == -1)
		fatal("kill eavd");
	while (waitpid(old, &status, 0) == -1)
		if (errno != EINTR)
			fatal("waitpid eavd");
	s->eavd = 0;
	nemesis_log(s, json_pack("{s:s, s:i, s:f}", "type", "kill_supervisor",
	    "pid", (int)old, "real", real));
	pause_ms(RESTART_SEC_MS);
	eavd_start(s);
	up = eavd_wait_up(s, 30000);
	if (s->nsup < (int)(sizeof(s->sup_ready_ms) /
	    sizeof(s->sup_ready_ms[0]))) {
		s->sup_kill_real[s->nsup] = real;
		s->sup_ready_ms[s->nsup++] = up ? (real_s() - real) * 1000 : -1;
	}
	nemesis_log(s, json_pack("{s:s, s:i, s:b}", "type", "supervisor_up",
	    "pid", (int)s->eavd, "ok", up));
	return up;
}

/*
 * A process pause (the GC-pause case): SIGSTOP now, SIGCONT stop_ms later
 * from the nemesis loop (stop_cont), while the other nemeses go on.
 */
static int
fault_stop(struct soak *s)
{
	struct victim	v[MAX_VICTIMS];
	int		n, i, pick = -1;

	if ((n = victims(s, v, MAX_VICTIMS)) <= 0)
		return 0;
	for (i = 0; i < n; i++)
		if (v[i].nrunning > 0 && (pick == -1 ||
		    v[i].nrunning > v[pick].nrunning))
			pick = i;
	if (pick == -1)
		pick = rng_range(&s->rng, 0, n - 1);
	if (!ours(s, v[pick].pid) || kill(v[pick].pid, SIGSTOP) == -1)
		return 0;
	s->stopped = v[pick].pid;
	s->stop_real = real_s();
	s->stop_until = mono_ns() + (int64_t)s->p.stop_ms * 1000000;
	nemesis_log(s, json_pack("{s:s, s:i, s:o}", "type", "sigstop", "pid",
	    (int)s->stopped, "running", running_json(v[pick].running)));
	return 1;
}

/*
 * Sends SIGCONT to the paused worker if it is still ours and stopped: if
 * eavd died meanwhile, the worker died with it and its pid may be reused.
 */
void
stop_cont(struct soak *s)
{
	char	comm[64], st;
	pid_t	ppid, sid;

	if (s->stopped == 0)
		return;
	if (proc_info(s->stopped, comm, sizeof(comm), &st, &ppid, &sid) == 0 &&
	    strcmp(comm, "eav-worker") == 0 && st == 'T' &&
	    kill(s->stopped, SIGCONT) == -1)
		log_warn("SIGCONT %d", (int)s->stopped);
	nemesis_log(s, json_pack("{s:s, s:i}", "type", "sigcont", "pid",
	    (int)s->stopped));
	fault_window(s, s->stop_real, real_s());
	s->stopped = 0;
}

/* Remembers when a fault other than a worker kill held. */
static void
fault_window(struct soak *s, double from, double to)
{
	if (s->nfwin < (int)(sizeof(s->fwin0) / sizeof(s->fwin0[0]))) {
		s->fwin0[s->nfwin] = from;
		s->fwin1[s->nfwin++] = to;
	}
}

static int
fault_run(struct soak *s, enum fault_kind k)
{
	double	from = real_s();
	int	ok;

	switch (k) {
	case F_PG_FAST:
		ok = fault_pg(s, "fast");
		break;
	case F_PG_IMMEDIATE:
		ok = fault_pg(s, "immediate");
		break;
	case F_BACKEND:
		ok = fault_backend(s);
		break;
	case F_SUPERVISOR:
		ok = fault_supervisor(s);
		break;
	default:
		ok = fault_stop(s);
		break;
	}
	s->faults_done[k] += ok;
	if (k != F_STOP)
		fault_window(s, from, real_s());
	if (!ok)
		nemesis_log(s, json_pack("{s:s, s:s}", "type", "fault_failed",
		    "fault", fault_names[k]));
	return ok;
}

/*
 * Spreads the profile's faults evenly over the load window, in an order
 * and with a jitter drawn from the seed.  Returns how many.
 */
static int
plan_faults(struct soak *s, struct fault *f, int64_t t0)
{
	const int	 counts[F_NKINDS] = { s->p.pg_fast, s->p.pg_immediate,
			    s->p.backend_kills, s->p.sup_kills, s->p.stops };
	int64_t		 span = (int64_t)s->p.secs * 1000000000, slot;
	const char	*only = getenv("SOAK_FAULTS");
	struct fault	 tmp;
	int		 n = 0, k, i, j;

	for (k = 0; k < F_NKINDS; k++) {
		/* SOAK_FAULTS (development): only the faults it names. */
		if (only != NULL && strstr(only, fault_names[k]) == NULL)
			continue;
		s->faults_planned[k] = counts[k];
		for (i = 0; i < counts[k] && n < 256; i++)
			f[n++].kind = (enum fault_kind)k;
	}
	for (i = n - 1; i > 0; i--) {
		j = rng_range(&s->rng, 0, i);
		tmp = f[i];
		f[i] = f[j];
		f[j] = tmp;
	}
	slot = span / (n + 1);
	for (i = 0; i < n; i++)
		f[i].at = t0 + slot * (i + 1) +
		    (int64_t)rng_range(&s->rng, -250, 250) * slot / 1000;
	return n;
}

/*
 * The chaos phase: worker kills on their timer and the planned faults,
 * until the client is done, the planned faults have run and the
 * profile's kill count is reached.  Returns 0, or -1 past the deadline.
 */
int
nemesis_run(struct soak *s, pid_t client)
{
	struct fault	 f[256];
	int64_t		 t0 = mono_ns(), next_kill, now, wake;
	int64_t		 end = t0 + (int64_t)(s->p.secs + 180) * 1000000000;
	int		 nf, done = 0, client_done = 0, status;

	nf = plan_faults(s, f, t0);
	next_kill = t0 + (int64_t)rng_range(&s->rng, s->p.kill_min_ms,
	    s->p.kill_max_ms) * 1000000;
	while ((now = mono_ns()) < end) {
		(void)eavd_poll(s);
		if (s->stopped != 0 && now >= s->stop_until)
			stop_cont(s);
		if (!client_done && waitpid(client, &status, WNOHANG) == client)
			client_done = 1;
		if (client_done && done == nf && s->nkills >= s->p.min_kills &&
		    s->stopped == 0)
			return 0;
		if (done < nf && now >= f[done].at) {
			nemesis_log(s, json_pack("{s:s, s:s}", "type",
			    "fault", "fault", fault_names[f[done].kind]));
			fault_run(s, f[done++].kind);
			next_kill = mono_ns() + (int64_t)rng_range(&s->rng,
			    s->p.kill_min_ms, s->p.kill_max_ms) * 1000000;
			continue;
		}
		if (now >= next_kill) {
			kill_worker(s);
			next_kill = now + (int64_t)rng_range(&s->rng,
			    s->p.kill_min_ms, s->p.kill_max_ms) * 1000000;
		}
		wake = next_kill;
		if (done < nf && f[done].at < wake)
			wake = f[done].at;
		if (s->stopped != 0 && s->stop_until < wake)
			wake = s->stop_until;
		now = mono_ns();
		if (wake > now + 20000000)
			wake = now + 20000000;
		if (wake > now)
			pause_ms((long)((wake - now) / 1000000));
	}
	if (!client_done) {
		(void)kill(client, SIGKILL);
		(void)waitpid(client, &status, 0);
	}
	return -1;
}

/* The nemeses this machine or this eav cannot run yet, and why. */
void
nemesis_skips(struct soak *s)
{
	static const char *const partition = "not run: eav reaches "
	    "PostgreSQL over a Unix socket here (listen_addresses = ''), and "
	    "ip netns can only cut a network link; it needs PostgreSQL on a "
	    "veth address over TCP with keepalives, and eavd started in the "
	    "namespace (its workers inherit it, so only whole-node cuts are "
	    "possible until eav-worker can join a namespace of its own)";
	static const char *const killswitch = "not run: the kill switch "
	    "does not exist yet (issue 7)";

	nemesis_log(s, json_pack("{s:s, s:s, s:s}", "type", "skip", "nemesis",
	    "partition", "reason", partition));
	nemesis_log(s, json_pack("{s:s, s:s, s:s}", "type", "skip", "nemesis",
	    "kill_switch", "reason", killswitch));
	soak_result(s, -1, "nemesis partition", "%s", partition);
	soak_result(s, -1, "nemesis kill switch", "%s", killswitch);
}

/* Undoes every fault that may still hold: the checker needs a calm eav. */
void
heal(struct soak *s)
{
	stop_cont(s);
	if (!pg_running(s) && pg_ctl(s, "start", NULL) != 0)
		log_warnx("cannot start PostgreSQL to heal");
	(void)wait_db(s, 60000);
	(void)eavd_poll(s);
	if (s->eavd == 0)
		eavd_start(s);
	if (!eavd_wait_up(s, 30000))
		log_warnx("eavd is not fully up after healing");
	nemesis_log(s, json_pack("{s:s}", "type", "healed"));
}
