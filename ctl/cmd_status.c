/* eavctl status, eavctl alarm and eavctl migrate. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "exitcode.h"
#include "migrate.h"

/* eavctl status: children, queue depths, open alarms. */
int
cmd_status(struct ctl *ctl, int argc, char **argv)
{
	static const char *const phdr[] = { "node", "kind", "slot", "pid",
	    "state", "restarts", "uptime", "last_exit" };
	static const char *const qhdr[] = { "queue", "ready", "scheduled",
	    "running", "held", "oldest_ready" };
	static const char *const ahdr[] = { "alarm", "severity", "type",
	    "subject", "state", "count", "message" };
	PGresult	*res;
	int		 r;

	(void)argv;
	if (argc != 1)
		return ctl_usage("status");
	if ((r = ctl_call(ctl, DB_STATUS_PROCESSES, NULL, &res)) != 0)
		return r;
	printf("processes:\n");
	table_print(res, phdr, 2);
	PQclear(res);
	if ((r = ctl_call(ctl, DB_STATUS_QUEUES, NULL, &res)) != 0)
		return r;
	printf("\nqueues:\n");
	table_print(res, qhdr, 2);
	PQclear(res);
	if ((r = ctl_call(ctl, DB_STATUS_ALARMS, NULL, &res)) != 0)
		return r;
	printf("\nopen alarms:\n");
	table_print(res, ahdr, 2);
	PQclear(res);
	return 0;
}

/* eavctl alarm ack|resolve [-n note] id: an operator answers an alarm. */
int
cmd_alarm(struct ctl *ctl, int argc, char **argv)
{
	const char	*params[3] = { NULL, ctl->actor, NULL };
	PGresult	*res;
	char		*end;
	int		 ch, r, resolve;

	if (argc < 2 || (strcmp(argv[1], "ack") != 0 &&
	    strcmp(argv[1], "resolve") != 0))
		return ctl_usage("alarm");
	resolve = strcmp(argv[1], "resolve") == 0;
	argc--;
	argv++;
	while ((ch = getopt(argc, argv, "n:")) != -1) {
		if (ch != 'n' || !resolve)
			return ctl_usage("alarm");
		params[2] = optarg;
	}
	if (argc - optind != 1)
		return ctl_usage("alarm");
	params[0] = argv[optind];
	if (*params[0] == '\0' || strtoll(params[0], &end, 10) <= 0 ||
	    *end != '\0') {
		fprintf(stderr, "eavctl: alarm id must be a positive integer, "
		    "not \"%s\"\n", params[0]);
		return EAV_EXIT_USAGE;
	}
	if ((r = ctl_call(ctl, resolve ? DB_ALARM_RESOLVE : DB_ALARM_ACK,
	    params, &res)) != 0)
		return r;
	PQclear(res);
	printf("alarm %s %s\n", params[0], resolve ? "resolved" : "acked");
	return 0;
}

/*
 * eavctl alarms [-a]: the alarms not resolved (-a: the latest 100 of
 * any state), newest first; "alarms ack|resolve ..." as "alarm".
 */
int
cmd_alarms(struct ctl *ctl, int argc, char **argv)
{
	static const char *const hdr[] = { "id", "severity", "type",
	    "subject", "state", "count", "last_raised", "message" };
	const char	*params[1] = { "false" };
	PGresult	*res;
	int		 r;

	if (argc >= 2 && (strcmp(argv[1], "ack") == 0 ||
	    strcmp(argv[1], "resolve") == 0))
		return cmd_alarm(ctl, argc, argv);
	if (argc == 2 && strcmp(argv[1], "-a") == 0)
		params[0] = "true";
	else if (argc != 1)
		return ctl_usage("alarms");
	if ((r = ctl_call(ctl, DB_ALARMS_LIST, params, &res)) != 0)
		return r;
	table_print(res, hdr, 0);
	PQclear(res);
	return 0;
}

/* eavctl migrate: applies the migrations this binary carries. */
int
cmd_migrate(struct ctl *ctl, int argc, char **argv)
{
	int	applied, r;

	(void)argv;
	if (argc != 1)
		return ctl_usage("migrate");
	if ((r = ctl_connect(ctl)) != 0)
		return r;
	if (migrate_apply(&ctl->db, &applied) == -1) {
		fprintf(stderr, "eavctl: migration failed: %s\n",
		    ctl->db.errmsg);
		return EAV_EXIT_FATAL;
	}
	printf("%d migration(s) applied; schema at version %d\n", applied,
	    eav_migrations[eav_migration_count - 1].version);
	return 0;
}
