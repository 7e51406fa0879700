/*
 * eavsoak: the chaos soak of eav, run by tests/chaos/soak.sh on a
 * throwaway cluster (make soak-ci, make soak).
 *
 *   eavsoak run -p ci|long -s seed -o dir -d dsn -D pgdata -L pglog
 *       -B bindir [-u]
 *   eavsoak client ...          (the load client; run starts it)
 *
 * run: starts eavd as systemd would, runs the load without faults for a
 * while, then under the nemeses, heals every fault, waits for
 * quiescence (a poll with a 120 s deadline), checks the invariants
 * against the history and the database, stops eavd and looks for
 * anything left behind.  Everything lands in dir: history.jsonl,
 * nemesis.jsonl, invariants.txt, latency.txt, eavd.log and summary.txt,
 * whose last line is "N passed, N failed".  Exits 1 if a check failed.
 * -u runs pg_ctl as the postgres user (when run as root).
 *
 * SOAK_TASKS, SOAK_SECS and SOAK_BASE_SECS in the environment shrink a
 * profile for development; the kill and interruption thresholds and the
 * number of each fault (at least one) shrink with SOAK_SECS.
 */
#include <sys/stat.h>
#include <sys/wait.h>

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "soak.h"
#include "spawn.h"

static const struct profile profiles[] = {
	/*
	 * ci: 10,000 tasks over 140 s, 40 % of them in a burst every 10 s;
	 * a kill every 250 ms on average is 560 kills, less the pauses while
	 * PostgreSQL or eavd is down: the kill loop runs on past the load if
	 * it must, to reach 500.
	 */
	{ "ci", 10000, 140, 10000, 40, 30, 4, 100, 400, 500, 400,
	    1, 1, 1, 1, 1, 3000 },
	/* long: 200,000 steps over 20 minutes, every fault several times. */
	{ "long", 100000, 1200, 10000, 40, 30, 8, 100, 1000, 1800, 1500,
	    4, 4, 2, 3, 3, 5000 },
};

static void	usage(void) __attribute__((noreturn));
static void	run_args(struct soak *, int, char **);
static int	scale(int, int, int);
static void	profile_pick(struct soak *, const char *);
static void	setup(struct soak *);
static void	setup_fixture(struct soak *);
static void	write_conf(struct soak *);
static pid_t	client_start(struct soak *, const char *, int, int, long,
		    long, long);
static int	client_wait(struct soak *, pid_t, int);
static int	wait_drained(struct soak *, int);
static void	summary(struct soak *, double);
static void	phases(struct soak *);
static int	run_main(int, char **);

static void
usage(void)
{
	fprintf(stderr, "usage: eavsoak run -p ci|long -s seed -o dir -d dsn "
	    "-D pgdata -L pglog -B bindir [-u]\n"
	    "       eavsoak client ...\n");
	exit(2);
}

/* Records one check (status 1 pass, 0 fail, -1 skip) for summary.txt. */
void
soak_result(struct soak *s, int status, const char *name, const char *fmt,
    ...)
{
	struct result	*r;
	va_list		 ap;

	if (s->nresults == SOAK_MAX_RESULTS)
		fatalx("too many results");
	r = &s->results[s->nresults++];
	r->status = status;
	snprintf(r->name, sizeof(r->name), "%s", name);
	va_start(ap, fmt);
	vsnprintf(r->detail, sizeof(r->detail), fmt, ap);
	va_end(ap);
}

/* One line of latency.txt, repeated in summary.txt. */
void
soak_figure(struct soak *s, const char *fmt, ...)
{
	char	line[512];
	va_list	ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (fprintf(s->figures, "%s\n", line) < 0 || fflush(s->figures) == EOF)
		fatal("latency.txt");
	sb_add(&s->figs, "  %s\n", line);
}

/* n scaled by secs/of, but at least one: every fault runs once. */
static int
scale(int n, int secs, int of)
{
	return n * secs / of > 0 ? n * secs / of : 1;
}

static void
profile_pick(struct soak *s, const char *name)
{
	const char	*e;
	size_t		 i;
	int		 secs;

	for (i = 0; i < sizeof(profiles) / sizeof(profiles[0]); i++)
		if (strcmp(profiles[i].name, name) == 0)
			break;
	if (i == sizeof(profiles) / sizeof(profiles[0]))
		usage();
	s->p = profiles[i];
	if ((e = getenv("SOAK_TASKS")) != NULL && atoi(e) > 0)
		s->p.tasks = atoi(e);
	if ((e = getenv("SOAK_BASE_SECS")) != NULL && atoi(e) >= 10)
		s->p.base_secs = atoi(e);
	if ((e = getenv("SOAK_SECS")) != NULL && atoi(e) >= 10) {
		secs = atoi(e);
		s->p.min_kills = s->p.min_kills * secs / s->p.secs;
		s->p.min_interrupted = s->p.min_interrupted * secs / s->p.secs;
		s->p.pg_fast = scale(s->p.pg_fast, secs, s->p.secs);
		s->p.pg_immediate = scale(s->p.pg_immediate, secs, s->p.secs);
		s->p.backend_kills = scale(s->p.backend_kills, secs, s->p.secs);
		s->p.sup_kills = scale(s->p.sup_kills, secs, s->p.secs);
		s->p.stops = scale(s->p.stops, secs, s->p.secs);
		s->p.secs = secs;
	}
}

static void
run_args(struct soak *s, int argc, char **argv)
{
	const char	*prof = NULL;
	ssize_t		 n;
	int		 ch;

	while ((ch = getopt(argc, argv, "p:s:o:d:D:L:B:u")) != -1) {
		switch (ch) {
		case 'p': prof = optarg; break;
		case 's': s->seed = strtoull(optarg, NULL, 10); break;
		case 'o': s->dir = optarg; break;
		case 'd': s->dsn = optarg; break;
		case 'D': s->pgdata = optarg; break;
		case 'L': s->pglog = optarg; break;
		case 'B': s->bindir = optarg; break;
		case 'u': s->as_postgres = 1; break;
		default: usage();
		}
	}
	if (prof == NULL || s->dir == NULL || s->dsn == NULL ||
	    s->pgdata == NULL || s->pglog == NULL || s->bindir == NULL)
		usage();
	profile_pick(s, prof);
	if ((n = readlink("/proc/self/exe", s->self, sizeof(s->self) - 1)) ==
	    -1)
		fatal("readlink /proc/self/exe");
	s->self[n] = '\0';
	s->rng = s->seed ^ 0x5DEECE66DULL;
	s->obs.dsn = s->dsn;
	/* A node name of our own: processes left behind are found by it. */
	snprintf(s->node, sizeof(s->node), "soak-%llu-%d",
	    (unsigned long long)s->seed, (int)getpid());
}

/* Durable settings (D.1, P7), a quick retry queue, the ledger at start. */
static void
setup(struct soak *s)
{
	PGresult	*res;
	int		 durable;

	if ((res = obs_q(&s->obs, "SELECT current_setting('fsync'), "
	    "current_setting('synchronous_commit'), "
	    "current_setting('full_page_writes')", 0)) == NULL)
		fatalx("cannot reach the soak database");
	durable = strcmp(PQgetvalue(res, 0, 0), "on") == 0 &&
	    strcmp(PQgetvalue(res, 0, 1), "on") == 0 &&
	    strcmp(PQgetvalue(res, 0, 2), "on") == 0;
	soak_result(s, durable, "durable settings", "fsync=%s "
	    "synchronous_commit=%s full_page_writes=%s",
	    PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1),
	    PQgetvalue(res, 0, 2));
	PQclear(res);
	setup_fixture(s);
	write_conf(s);
}

static void
setup_fixture(struct soak *s)
{
	PGresult	*res;
	char		 max[16];
	int		 i;

	/*
	 * A fixture, as eavbench's kill mode does: the default queue backs
	 * off from 1 s to an hour, and under a kill every 250 ms the soak
	 * would measure the back-off instead of the recovery.
	 */
	snprintf(max, sizeof(max), "%d", SOAK_MAX_ATTEMPTS);
	if ((res = obs_q(&s->obs, "SELECT eav.queue_set($1, $2::int, 20, "
	    "500, 'chaos soak: quick back-off', 'eavsoak')", 2, SOAK_QUEUE,
	    max)) == NULL)
		fatalx("cannot create queue %s", SOAK_QUEUE);
	PQclear(res);
	if ((res = obs_q(&s->obs, "SELECT id, balance FROM "
	    "eav.ledger_accounts ORDER BY id", 0)) == NULL)
		fatalx("cannot read the ledger");
	for (i = 0; i < PQntuples(res) && i < 4; i++) {
		snprintf(s->accounts[i], sizeof(s->accounts[i]), "%s",
		    PQgetvalue(res, i, 0));
		s->balances[i] = strtoll(PQgetvalue(res, i, 1), NULL, 10);
	}
	s->naccounts = i;
	PQclear(res);
}

/* The soak's eav.conf: D.2's relaxed restart policy, a quick poll. */
static void
write_conf(struct soak *s)
{
	FILE	*fp;

	snprintf(s->conf, sizeof(s->conf), "%s/eav.conf", s->dir);
	if ((fp = fopen(s->conf, "w")) == NULL)
		fatal("%s", s->conf);
	if (fprintf(fp, "[database]\ndsn = %s\n\n[log]\nlevel = info\n\n"
	    "[supervisor]\nnode_name = %s\nworkers = %d\n"
	    "restart_backoff_min = 10ms\nrestart_backoff_max = 200ms\n"
	    "restart_intensity = 0\nsweep_interval = 1s\n\n"
	    "[worker]\n# Delayed steps (bursts, retries) are found by "
	    "polling.\n"
	    "poll_interval = 100ms\n\n[producer]\ndemo = off\n", s->dsn,
	    s->node, s->p.workers) < 0 || fclose(fp) == EOF)
		fatal("%s", s->conf);
}

/*
 * Starts the load client for one phase (nstream tasks over nbursts
 * bursts' time, plus burst_k tasks per burst); returns its pid.
 */
static pid_t
client_start(struct soak *s, const char *phase, int burst0, int nbursts,
    long burst_k, long nstream, long op0)
{
	char	 seed[24], b0[16], nb[16], bk[24], ns[24], bms[16], o0[24];
	char	 m0[24], ph[16];
	char	*argv[] = { s->self, "client", "-d", s->dsn, "-o", s->history,
		    "-s", seed, "-P", ph, "-w", b0, "-b", nb, "-k", bk, "-m",
		    ns, "-B", bms, "-O", o0, "-M", m0, NULL };
	pid_t	 pid;

	snprintf(seed, sizeof(seed), "%llu", (unsigned long long)s->seed);
	snprintf(ph, sizeof(ph), "%s", phase);
	snprintf(b0, sizeof(b0), "%d", burst0);
	snprintf(nb, sizeof(nb), "%d", nbursts);
	snprintf(bk, sizeof(bk), "%ld", burst_k);
	snprintf(ns, sizeof(ns), "%ld", nstream);
	snprintf(bms, sizeof(bms), "%d", s->p.burst_ms);
	snprintf(o0, sizeof(o0), "%ld", op0);
	snprintf(m0, sizeof(m0), "%lld", (long long)s->mono0);
	if ((pid = spawn_child(s->self, argv, NULL, -1, SIGKILL)) == -1)
		fatal("cannot start the client");
	nemesis_log(s, json_pack("{s:s, s:s, s:i}", "type", "client_started",
	    "phase", phase, "pid", (int)pid));
	return pid;
}

/* Waits for the client, keeping eavd alive; 1 if it ended well. */
static int
client_wait(struct soak *s, pid_t pid, int timeout_s)
{
	int64_t	end = mono_ns() + (int64_t)timeout_s * 1000000000;
	int	status;
	pid_t	r;

	while ((r = waitpid(pid, &status, WNOHANG)) == 0 && mono_ns() < end) {
		(void)eavd_poll(s);
		pause_ms(20);
	}
	if (r == -1)
		fatal("waitpid client");
	if (r == 0) {
		(void)kill(pid, SIGKILL);
		(void)waitpid(pid, &status, 0);
		return 0;
	}
	return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* Polls until no step waits or runs (held excepted); 1, or 0. */
static int
wait_drained(struct soak *s, int timeout_s)
{
	int64_t		end = mono_ns() + (int64_t)timeout_s * 1000000000;
	long long	busy;

	while (mono_ns() < end) {
		(void)eavd_poll(s);
		if (obs_ll(&s->obs, &busy, "SELECT count(*) FROM eav.steps "
		    "WHERE state IN ('pending', 'running', 'blocked')", 0) ==
		    0 && busy == 0)
			return 1;
		pause_ms(50);
	}
	return 0;
}

/* summary.txt: the figures, one line per check, then the totals. */
static void
summary(struct soak *s, double secs)
{
	char		 path[PATH_MAX];
	const char	*commit = getenv("SOAK_COMMIT");
	const char	*tag[] = { "FAIL", "PASS" };
	FILE		*fp;
	int		 i, pass = 0, fail = 0;

	snprintf(path, sizeof(path), "%s/summary.txt", s->dir);
	if ((fp = fopen(path, "w")) == NULL)
		fatal("%s", path);
	fprintf(fp, "eav chaos soak: profile %s, seed %llu, commit %s\n"
	    "%d tasks (%d steps) under chaos over %d s (%d %% in a burst "
	    "every %d ms), %d workers, after %d s without faults; "
	    "orchestrator ran %.0f s\n\nFigures:\n%s\nChecks:\n", s->p.name,
	    (unsigned long long)s->seed, commit ? commit : "?", s->p.tasks,
	    s->p.tasks * 2, s->p.secs, s->p.burst_pct, s->p.burst_ms,
	    s->p.workers, s->p.base_secs, secs, s->figs.s ? s->figs.s : "");
	for (i = 0; i < s->nresults; i++) {
		fprintf(fp, "%s %s: %s\n", s->results[i].status < 0 ? "SKIP" :
		    tag[s->results[i].status], s->results[i].name,
		    s->results[i].detail);
		pass += s->results[i].status == 1;
		fail += s->results[i].status == 0;
	}
	fprintf(fp, "%d passed, %d failed\n", pass, fail);
	if (ferror(fp) || fclose(fp) == EOF)
		fatal("%s", path);
}

/*
 * The two phases run the same load: a stream, and bursts of burst_k
 * tasks every burst_ms; the fault-free one is shorter.
 */
static void
phases(struct soak *s)
{
	int	nb = s->p.secs * 1000 / s->p.burst_ms;
	int	bb = s->p.base_secs * 1000 / s->p.burst_ms, ok;
	long	burst_k = (long)s->p.tasks * s->p.burst_pct / 100 / nb;
	long	stream = s->p.tasks - burst_k * nb;
	long	bstream = stream * s->p.base_secs / s->p.secs;
	pid_t	client;

	log_info("fault-free phase: %d s, %ld stream tasks, %d bursts of %ld",
	    s->p.base_secs, bstream, bb, burst_k);
	client = client_start(s, "base", 1, bb, burst_k, bstream, 1);
	ok = client_wait(s, client, s->p.base_secs + 150);
	soak_result(s, ok && wait_drained(s, 60), "fault-free phase",
	    "%d s of load enqueued and drained", s->p.base_secs);

	log_info("chaos phase: %d s, %ld stream tasks, %d bursts of %ld",
	    s->p.secs, stream, nb, burst_k);
	nemesis_skips(s);
	client = client_start(s, "chaos", bb + 1, nb, burst_k, stream,
	    SOAK_CHAOS_OP0);
	ok = nemesis_run(s, client) == 0;
	soak_result(s, ok, "chaos phase ended", "load done, planned faults "
	    "run, %d kills", s->nkills);
}

static int
run_main(int argc, char **argv)
{
	static struct soak	 s;
	char			 path[PATH_MAX];
	int			 i, fails = 0;

	log_init("eavsoak");
	s.mono0 = mono_ns();
	run_args(&s, argc, argv);
	unsetenv("EAV_DSN");
	unsetenv("EAV_INJECT");
	unsetenv("NOTIFY_SOCKET");
	snprintf(s.history, sizeof(s.history), "%s/history.jsonl", s.dir);
	snprintf(path, sizeof(path), "%s/nemesis.jsonl", s.dir);
	s.nem = jl_open(path);
	snprintf(path, sizeof(path), "%s/latency.txt", s.dir);
	if ((s.figures = fopen(path, "w")) == NULL)
		fatal("%s", path);
	setup(&s);
	eavd_start(&s);
	soak_result(&s, eavd_wait_up(&s, 60000), "eavd up", "%d workers "
	    "and the producer up", s.p.workers);
	phases(&s);
	heal(&s);
	check_all(&s);
	soak_result(&s, eavd_stop(&s) == 0, "eavd stops cleanly",
	    "SIGTERM, exit 0 within 30 s");
	check_leaks(&s);
	summary(&s, since_s(s.mono0));
	for (i = 0; i < s.nresults; i++)
		fails += s.results[i].status == 0;
	return fails > 0;
}

int
main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	optind = 2;
	if (strcmp(argv[1], "run") == 0)
		return run_main(argc, argv);
	if (strcmp(argv[1], "client") == 0)
		return client_main(argc, argv);
	usage();
}
