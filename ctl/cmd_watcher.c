/*
 * eavctl watchers: list, show, add, enable, disable and remove a watcher.
 * Every check (kind, argv, URL, interval, time-out, threshold) is
 * eav.watcher_add's, which names the field and the reason; a watcher
 * that does not exist is exit 3.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "exitcode.h"

#define WATCH_INTERVAL_MS	"60000"
#define WATCH_TIMEOUT_MS	"10000"
#define WATCH_THRESHOLD		"3"
#define WATCH_EVENT_TYPE	"watcher.fired"

static int	watch_call(struct ctl *, enum db_stmt, const char *const *,
		    PGresult **);
static int	watch_list(struct ctl *);
static int	watch_show(struct ctl *, const char *);
static int	watch_add(struct ctl *, int, char **);
static int	watch_change(struct ctl *, const char *, const char *);

/* ctl_call, with "no such watcher" (EA004) as exit 3. */
static int
watch_call(struct ctl *ctl, enum db_stmt s, const char *const *params,
    PGresult **res)
{
	int	r = ctl_call(ctl, s, params, res);

	if (r != 0 && strcmp(ctl->db.sqlstate, "EA004") == 0)
		return EAV_EXIT_NOT_FOUND;
	return r;
}

/* watchers [list]: every watcher with its counts and next tick. */
static int
watch_list(struct ctl *ctl)
{
	static const char *const hdr[] = { "name", "kind", "state",
	    "interval/timeout_ms", "event_type", "next_tick", "last",
	    "ticks", "fires", "errors", "consecutive", "target" };
	PGresult	*res;
	int		 r;

	if ((r = ctl_call(ctl, DB_WATCHER_LIST, NULL, &res)) != 0)
		return r;
	table_print(res, hdr, 0);
	PQclear(res);
	return 0;
}

/* watchers show name: one watcher, a field a line. */
static int
watch_show(struct ctl *ctl, const char *name)
{
	static const char *const keys[] = { "name", "kind", "state", "target",
	    "event_type", "interval_ms", "timeout_ms", "next_tick",
	    "leased_by", "last_tick", "last_outcome", "ticks", "fires",
	    "errors", "consecutive_errors", "last_error", "last_error_at",
	    "last_fired", "disabled_reason" };
	const char	*params[1] = { name };
	PGresult	*res;
	size_t		 i;
	int		 r;

	if ((r = ctl_call(ctl, DB_WATCHER_SHOW, params, &res)) != 0)
		return r;
	if (PQntuples(res) == 0) {
		fprintf(stderr, "eavctl: no watcher \"%s\"\n", name);
		PQclear(res);
		return EAV_EXIT_NOT_FOUND;
	}
	for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		printf("%-19s %s\n", keys[i], PQgetvalue(res, 0, (int)i));
	PQclear(res);
	return 0;
}

/*
 * watchers add [-i interval_ms] [-t timeout_ms] [-n threshold]
 * [-T event_type] name exec|http config_json: prints the first tick.
 */
static int
watch_add(struct ctl *ctl, int argc, char **argv)
{
	const char	*params[8] = { NULL, NULL, NULL, WATCH_EVENT_TYPE,
			    WATCH_INTERVAL_MS, WATCH_TIMEOUT_MS,
			    WATCH_THRESHOLD, ctl->actor };
	PGresult	*res;
	int		 ch, r, i;

	while ((ch = getopt(argc, argv, "i:t:n:T:")) != -1) {
		switch (ch) {
		case 'i':
			params[4] = optarg;
			break;
		case 't':
			params[5] = optarg;
			break;
		case 'n':
			params[6] = optarg;
			break;
		case 'T':
			params[3] = optarg;
			break;
		default:
			return ctl_usage("watchers");
		}
	}
	if (argc - optind != 3)
		return ctl_usage("watchers");
	for (i = 0; i < 3; i++)
		params[i] = argv[optind + i];
	if ((r = ctl_call(ctl, DB_WATCHER_ADD, params, &res)) != 0)
		return r;
	printf("watcher %s added; first tick %s\n", params[0],
	    PQgetvalue(res, 0, 0));
	PQclear(res);
	return 0;
}

/* watchers enable|disable|rm name */
static int
watch_change(struct ctl *ctl, const char *verb, const char *name)
{
	const char	*params[2] = { name, ctl->actor };
	enum db_stmt	 s;
	PGresult	*res;
	int		 r;

	if (strcmp(verb, "enable") == 0)
		s = DB_WATCHER_ENABLE;
	else if (strcmp(verb, "disable") == 0)
		s = DB_WATCHER_DISABLE;
	else if (strcmp(verb, "rm") == 0 || strcmp(verb, "remove") == 0)
		s = DB_WATCHER_REMOVE;
	else
		return ctl_usage("watchers");
	if ((r = watch_call(ctl, s, params, &res)) != 0)
		return r;
	printf("watcher %s %s\n", name, s == DB_WATCHER_ENABLE ? "enabled" :
	    s == DB_WATCHER_DISABLE ? "disabled" : "removed");
	PQclear(res);
	return 0;
}

int
cmd_watchers(struct ctl *ctl, int argc, char **argv)
{
	if (argc == 1 || (argc == 2 && strcmp(argv[1], "list") == 0))
		return watch_list(ctl);
	if (argc >= 2 && strcmp(argv[1], "add") == 0)
		return watch_add(ctl, argc - 1, argv + 1);
	if (argc == 3 && strcmp(argv[1], "show") == 0)
		return watch_show(ctl, argv[2]);
	if (argc == 3)
		return watch_change(ctl, argv[1], argv[2]);
	return ctl_usage("watchers");
}
