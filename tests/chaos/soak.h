/*
 * eavsoak: the chaos soak (reliability plan D.1-D.4).  One orchestrator
 * process plays systemd for eavd, runs the nemeses and the checker; the
 * load client runs in a child process of its own, so that a nemesis that
 * blocks (pg_ctl, a wait for recovery) never delays the history.
 */
#ifndef EAV_TESTS_CHAOS_SOAK_H
#define EAV_TESTS_CHAOS_SOAK_H

#include <sys/types.h>

#include <limits.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>
#include <libpq-fe.h>

#define SOAK_QUEUE	"soak"
#define SOAK_MAX_ATTEMPTS 100
#define SOAK_CHAOS_OP0	1000000L	/* first op id of the chaos phase */
#define SOAK_MAX_RESULTS 96

/* What a profile asks for; see profiles[] in main.c. */
struct profile {
	const char	*name;
	int		 tasks;		/* chaos-phase tasks, 2 steps each */
	int		 secs;		/* chaos load window */
	int		 burst_ms;	/* a burst of tasks every burst_ms */
	int		 burst_pct;	/* share of the tasks in bursts */
	int		 base_secs;	/* fault-free window measured first */
	int		 workers;
	int		 kill_min_ms;
	int		 kill_max_ms;
	int		 min_kills;
	int		 min_interrupted;
	int		 pg_fast;
	int		 pg_immediate;
	int		 backend_kills;
	int		 sup_kills;
	int		 stops;
	int		 stop_ms;	/* length of a SIGSTOP */
};

enum fault_kind {
	F_PG_FAST,
	F_PG_IMMEDIATE,
	F_BACKEND,
	F_SUPERVISOR,
	F_STOP,
	F_NKINDS
};

/* One SIGKILL of a worker, kept for the kill -> unknown figure. */
struct kill_rec {
	pid_t		 pid;
	long long	 incarnation;
	double		 real;
	int		 running;
};

/* A growing string (sb_add). */
struct sbuf {
	char	*s;
	size_t	 len;
	size_t	 cap;
};

/* One line of summary.txt. */
struct result {
	int		 status;	/* 1 pass, 0 fail, -1 skip */
	char		 name[64];
	char		 detail[448];
};

/* The orchestrator's database connection (reconnects when lost). */
struct obs {
	PGconn		*conn;
	char		*dsn;
};

struct soak {
	struct profile	 p;
	uint64_t	 seed;
	uint64_t	 rng;
	char		*dir;
	char		*dsn;
	char		*pgdata;
	char		*pglog;
	char		*bindir;
	int		 as_postgres;
	char		 node[64];
	char		 conf[PATH_MAX];
	char		 history[PATH_MAX];
	char		 self[PATH_MAX];
	int64_t		 mono0;		/* run origin, CLOCK_MONOTONIC ns */
	struct obs	 obs;
	FILE		*nem;		/* nemesis.jsonl */

	pid_t		 eavd;
	pid_t		 eavd_pids[64];	/* every eavd started: sessions */
	int		 neavd;
	int		 eavd_unexpected;
	pid_t		 stopped;	/* a worker under SIGSTOP */
	int64_t		 stop_until;
	double		 stop_real;

	struct kill_rec	*kills;
	int		 nkills;
	int		 kills_cap;
	int		 aimed;
	int		 aimed_hit;
	int		 faults_done[F_NKINDS];
	int		 faults_planned[F_NKINDS];
	double		 pg_up_real[32];
	double		 pg_up_ms[32];	/* PG up -> all workers connected */
	int		 npg_up;
	double		 fwin0[64];	/* windows of the other faults, */
	double		 fwin1[64];	/* CLOCK_REALTIME */
	int		 nfwin;
	double		 sup_kill_real[16];
	double		 sup_ready_ms[16];
	int		 nsup;

	char		 accounts[4][32];
	long long	 balances[4];
	int		 naccounts;

	struct result	 results[SOAK_MAX_RESULTS];
	int		 nresults;
	FILE		*figures;	/* latency.txt */
	struct sbuf	 figs;		/* the same lines, for summary.txt */
};

/* main.c */
void		 soak_result(struct soak *, int, const char *, const char *,
		    ...) __attribute__((format(printf, 4, 5)));
void		 soak_figure(struct soak *, const char *, ...)
		    __attribute__((format(printf, 2, 3)));

/* client.c */
int		 client_main(int, char **);

/* nemesis.c */
void		 eavd_start(struct soak *);
int		 eavd_poll(struct soak *);
int		 eavd_wait_up(struct soak *, int);
int		 eavd_stop(struct soak *);
void		 nemesis_log(struct soak *, json_t *);
int		 nemesis_run(struct soak *, pid_t);
void		 nemesis_skips(struct soak *);
void		 heal(struct soak *);
void		 stop_cont(struct soak *);
int		 pg_running(struct soak *);

/* check.c */
int		 check_quiescence(struct soak *);
void		 check_all(struct soak *);
void		 check_leaks(struct soak *);
void		 check_throughput(struct soak *);

/* util.c */
int64_t		 mono_ns(void);
double		 real_s(void);
double		 since_s(int64_t);
void		 pause_ms(long);
uint64_t	 rng_next(uint64_t *);
int		 rng_range(uint64_t *, int, int);
void		 soak_quiet(void *, const char *);
PGresult	*obs_q(struct obs *, const char *, int, ...);
int		 obs_ll(struct obs *, long long *, const char *, int, ...);
int		 obs_run(struct obs *, const char *, int, ...);
void		 obs_close(struct obs *);
void		 jl_write(FILE *, json_t *);
FILE		*jl_open(const char *);
int		 proc_info(pid_t, char *, size_t, char *, pid_t *, pid_t *);
int		 proc_has_arg(pid_t, const char *, const char *);
int		 run_wait(char *const [], const char *);
pid_t		 postmaster_pid(const char *);

void		 sb_add(struct sbuf *, const char *, ...)
		    __attribute__((format(printf, 2, 3)));
void		 sb_free(struct sbuf *);

#endif
