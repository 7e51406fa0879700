/*
 * eavctl schedules: list, add, pause, resume, remove a schedule, and show
 * its next slots.  Every check (cron syntax, a cron that never fires, the
 * time zone, the policy, the task template) is eav.schedule_add's, which
 * names what it refuses.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"

static int	sched_list(struct ctl *);
static int	sched_add(struct ctl *, int, char **);
static int	sched_change(struct ctl *, const char *, const char *);
static int	sched_next(struct ctl *, const char *, const char *);

/* schedules [list]: every schedule with its next and last fire. */
static int
sched_list(struct ctl *ctl)
{
	static const char *const hdr[] = { "name", "cron", "tz", "state",
	    "policy", "queue/kind", "next_fire", "last_fired", "fires",
	    "misses", "failures" };
	PGresult	*res;
	int		 r;

	if ((r = ctl_call(ctl, DB_SCHEDULE_LIST, NULL, &res)) != 0)
		return r;
	table_print(res, hdr, 0);
	PQclear(res);
	return 0;
}

/*
 * schedules add [-z tz] [-p policy] [-c cap] name cron queue kind steps:
 * prints the first slot.
 */
static int
sched_add(struct ctl *ctl, int argc, char **argv)
{
	const char	*params[9] = { NULL, NULL, NULL, NULL, NULL, "UTC",
			    "skip", "10", ctl->actor };
	PGresult	*res;
	int		 ch, r, i;

	while ((ch = getopt(argc, argv, "z:p:c:")) != -1) {
		switch (ch) {
		case 'z':
			params[5] = optarg;
			break;
		case 'p':
			params[6] = optarg;
			break;
		case 'c':
			params[7] = optarg;
			break;
		default:
			return ctl_usage("schedules");
		}
	}
	if (argc - optind != 5)
		return ctl_usage("schedules");
	for (i = 0; i < 5; i++)
		params[i] = argv[optind + i];
	if ((r = ctl_call(ctl, DB_SCHEDULE_ADD, params, &res)) != 0)
		return r;
	printf("schedule %s added; first slot %s\n", params[0],
	    PQgetvalue(res, 0, 0));
	PQclear(res);
	return 0;
}

/* schedules pause|resume|remove name */
static int
sched_change(struct ctl *ctl, const char *verb, const char *name)
{
	const char	*params[2] = { name, ctl->actor };
	enum db_stmt	 s;
	PGresult	*res;
	int		 r;

	if (strcmp(verb, "pause") == 0)
		s = DB_SCHEDULE_PAUSE;
	else if (strcmp(verb, "resume") == 0)
		s = DB_SCHEDULE_RESUME;
	else if (strcmp(verb, "remove") == 0)
		s = DB_SCHEDULE_REMOVE;
	else
		return ctl_usage("schedules");
	if ((r = ctl_call(ctl, s, params, &res)) != 0)
		return r;
	if (s == DB_SCHEDULE_RESUME)
		printf("schedule %s resumed; next slot %s\n", name,
		    PQgetvalue(res, 0, 0));
	else
		printf("schedule %s %s\n", name, s == DB_SCHEDULE_PAUSE ?
		    "paused" : "removed");
	PQclear(res);
	return 0;
}

/* schedules next name [n]: the next n slots, in UTC and local time. */
static int
sched_next(struct ctl *ctl, const char *name, const char *n)
{
	static const char *const hdr[] = { "slot", "local", "tz" };
	const char	*params[2] = { name, n };
	PGresult	*res;
	int		 r;

	if ((r = ctl_call(ctl, DB_SCHEDULE_NEXT, params, &res)) != 0)
		return r;
	table_print(res, hdr, 0);
	PQclear(res);
	return 0;
}

int
cmd_schedules(struct ctl *ctl, int argc, char **argv)
{
	if (argc == 1 || (argc == 2 && strcmp(argv[1], "list") == 0))
		return sched_list(ctl);
	if (argc >= 2 && strcmp(argv[1], "add") == 0)
		return sched_add(ctl, argc - 1, argv + 1);
	if (argc == 3 && strcmp(argv[1], "next") == 0)
		return sched_next(ctl, argv[2], "5");
	if (argc == 4 && strcmp(argv[1], "next") == 0)
		return sched_next(ctl, argv[2], argv[3]);
	if (argc == 3)
		return sched_change(ctl, argv[1], argv[2]);
	return ctl_usage("schedules");
}
