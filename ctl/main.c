/*
 * eavctl [-f config] [-d dsn] [-a actor] command [args]
 *
 * The DSN comes from -d, else EAV_DSN, else the configuration file (-f,
 * else /etc/eav/eav.conf if it exists), else "dbname=eav".
 */
#include <getopt.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "ctl.h"
#include "exitcode.h"
#include "log.h"

static const struct ctl_cmd cmds[] = {
	{ "migrate", cmd_migrate, "migrate" },
	{ "enqueue", cmd_enqueue, "enqueue [-A] [-q queue] [-k kind] "
	    "[-t run_at] {[-m max_attempts] [-i idempotency_key] tool "
	    "[input] | -s steps_json}" },
	{ "tasks", cmd_tasks, "tasks [-s state] [-q queue] [-n limit]" },
	{ "show", cmd_show, "show task_id" },
	{ "retry", cmd_retry, "retry task_id" },
	{ "cancel", cmd_cancel, "cancel [-r reason] task_id" },
	{ "resolve", cmd_resolve, "resolve [-n note] step_id "
	    "retry|succeeded|failed" },
	{ "event", cmd_event, "event source event_key type body" },
	{ "status", cmd_status, "status" },
	{ "queue", cmd_queue, "queue list | queue set [-m max_attempts] "
	    "[-b retry_base_ms] [-x retry_max_ms] [-d description] name | "
	    "queue stuck name stuck_after_ms | "
	    "queue recursion name max_depth|- max_trace_tasks|-" },
	{ "tools", cmd_tools, "tools list | tools show name | tools register "
	    "[-i] [-t timeout_ms] [-d description] name kind config|- | "
	    "tools reset name" },
	{ "approvals", cmd_approvals, "approvals [list] | approvals approve "
	    "[-n note] id | approvals deny -r reason id | approvals policy "
	    "tool policy_json|off" },
	{ "budget", cmd_budget, "budget [list] | budget set (-q queue | "
	    "-t tool) retries_per_minute | budget clear (-q queue | -t tool)" },
	{ "redaction", cmd_redaction, "redaction [list] [-a] | redaction "
	    "add [-h hint,...] [-m description] key|value|allow label "
	    "pattern | redaction disable label reason" },
	{ "kill-switch", cmd_kill, "kill-switch [list] | kill-switch on|off "
	    "[--queue queue | --tool tool] --reason reason" },
	{ "owner", cmd_owner, "owner [list] | owner set pattern queue "
	    "--reason reason | owner clear pattern --reason reason" },
	{ "alarms", cmd_alarms, "alarms [-a] | alarms ack id | "
	    "alarms resolve [-n note] id" },
	{ "alarm", cmd_alarm, "alarm ack id | alarm resolve [-n note] id" },
	{ "inject", cmd_inject, "inject list [-a] | inject points | "
	    "inject arm [-n count] [-s step_id] [-t tool] point "
	    "action[:arg] | inject disarm id|all" },
	{ "check", cmd_check, "check [-q]   (-q: the queue has drained)" },
	{ "audit", cmd_audit, "audit verify [--anchor FILE] | "
	    "audit anchor FILE" },
	{ "diagnose", cmd_diagnose, "diagnose [--json] [--verify]   "
	    "(exit 3: a critical finding)" },
	{ "schedules", cmd_schedules, "schedules [list] | schedules add "
	    "[-z tz] [-p skip|run_once|run_all] [-c cap] name cron queue kind "
	    "steps_json | schedules pause|resume|remove name | "
	    "schedules next name [n]" },
	{ "watchers", cmd_watchers, "watchers [list] | watchers show name | "
	    "watchers add [-i interval_ms] [-t timeout_ms] [-n threshold] "
	    "[-T event_type] name exec|http config_json | "
	    "watchers enable|disable|rm name" },
	{ "events", cmd_events, "events [list] [-s state] [-t type] "
	    "[-S source] [-n limit] | events show id | events release id | "
	    "events drop -r reason id" },
	{ "rules", cmd_rules, "rules [list] | rules add [-s source] "
	    "[-w predicates_json] [-p priority] [-d debounce_ms] "
	    "[-r max_per_minute] name type template_json | "
	    "rules enable|disable|rm name" },
	{ "event-types", cmd_event_types, "event-types [list] | event-types "
	    "add [-s source,...] [-m max_bytes] [-w dedupe_window_s] "
	    "[-d description] name schema_json" },
	{ "rehearse", cmd_rehearse, "rehearse [-n kills] [-i interval_ms] "
	    "[-p point] [-w wait_s] [-o postmortem.md]" },
};
#define NCMDS (sizeof(cmds) / sizeof(cmds[0]))

static void	usage(void) __attribute__((noreturn));
static void	ctl_default_actor(struct ctl *);

static void
usage(void)
{
	size_t	i;

	fprintf(stderr, "usage: eavctl [-f config] [-d dsn] [-a actor] "
	    "command [args]\ncommands:\n");
	for (i = 0; i < NCMDS; i++)
		fprintf(stderr, "  eavctl %s\n", cmds[i].usage);
	exit(EAV_EXIT_USAGE);
}

/* Prints a command's usage and returns the usage exit code. */
int
ctl_usage(const char *name)
{
	size_t	i;

	for (i = 0; i < NCMDS; i++)
		if (strcmp(cmds[i].name, name) == 0)
			fprintf(stderr, "usage: eavctl %s\n", cmds[i].usage);
	return EAV_EXIT_USAGE;
}

/* Reports a failed call in one line; returns the exit code it means. */
int
ctl_fail(struct ctl *ctl, enum db_status st)
{
	fprintf(stderr, "eavctl: %s\n", ctl->db.errmsg);
	return st == DB_BADINPUT || st == DB_REFUSED ? EAV_EXIT_USAGE :
	    EAV_EXIT_FATAL;
}

/* Connects; returns 0 or an exit code. */
int
ctl_connect(struct ctl *ctl)
{
	if (db_connect(&ctl->db, ctl->dsn, "eavctl") == -1) {
		fprintf(stderr, "eavctl: cannot connect to the database: %s\n",
		    ctl->db.errmsg);
		return EAV_EXIT_FATAL;
	}
	return 0;
}

/* Runs a statement; on failure reports it and returns an exit code. */
int
ctl_call(struct ctl *ctl, enum db_stmt s, const char *const *params,
    PGresult **res)
{
	enum db_status	st;

	if (ctl->db.conn == NULL && ctl_connect(ctl) != 0)
		return EAV_EXIT_FATAL;
	if ((st = db_call(&ctl->db, s, params, res)) != DB_OK)
		return ctl_fail(ctl, st);
	return 0;
}

static void
ctl_default_actor(struct ctl *ctl)
{
	const char	*user = getenv("USER");
	struct passwd	*pw;

	if (user == NULL && (pw = getpwuid(getuid())) != NULL)
		user = pw->pw_name;
	snprintf(ctl->actor, sizeof(ctl->actor), "operator:%s",
	    user ? user : "unknown");
}

int
main(int argc, char **argv)
{
	static struct ctl	 ctl;
	struct eav_config	 cfg;
	const char		*cfgpath = NULL;
	char			 err[512];
	size_t			 i;
	int			 ch, r;

	log_init("eavctl");
	log_level = LOG_LVL_ERR;
	ctl_default_actor(&ctl);
	while ((ch = getopt(argc, argv, "+a:d:f:h")) != -1) {
		switch (ch) {
		case 'a':
			snprintf(ctl.actor, sizeof(ctl.actor), "operator:%s",
			    optarg);
			break;
		case 'd':
			ctl.dsn = optarg;
			break;
		case 'f':
			cfgpath = optarg;
			break;
		default:
			usage();
		}
	}
	argc -= optind;
	argv += optind;
	if (argc < 1)
		usage();
	if (cfgpath == NULL && access("/etc/eav/eav.conf", R_OK) == 0)
		cfgpath = "/etc/eav/eav.conf";
	if (config_load(&cfg, cfgpath, err, sizeof(err)) == -1) {
		fprintf(stderr, "eavctl: %s\n", err);
		return EAV_EXIT_USAGE;
	}
	if (ctl.dsn == NULL)
		ctl.dsn = cfg.dsn;
	for (i = 0; i < NCMDS; i++)
		if (strcmp(argv[0], cmds[i].name) == 0)
			break;
	if (i == NCMDS) {
		/* One line, as for any refused input; -h lists the commands. */
		fprintf(stderr, "eavctl: unknown command \"%s\" (eavctl -h "
		    "lists the commands)\n", argv[0]);
		config_free(&cfg);
		return EAV_EXIT_USAGE;
	}
	optind = 1;
	r = cmds[i].fn(&ctl, argc, argv);
	db_close(&ctl.db);
	config_free(&cfg);
	return r;
}
