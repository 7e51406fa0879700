/*
 * eavctl events, rules and event-types: the inbox (list, show, release or
 * drop an event a storm gate holds), routing rules (list, add, enable,
 * disable, remove) and event types with their schemas (list, add).  Every
 * check is the SQL function's, which names what it refuses (exit 2); an
 * event or rule that does not exist exits 3.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "exitcode.h"

static int	ev_call(struct ctl *, enum db_stmt, const char *const *,
		    PGresult **);
static int	events_list(struct ctl *, int, char **);
static int	events_show(struct ctl *, const char *);
static int	events_release(struct ctl *, const char *);
static int	events_drop(struct ctl *, int, char **);
static int	rules_list(struct ctl *);
static int	rules_add(struct ctl *, int, char **);
static int	rules_change(struct ctl *, const char *, const char *);
static int	types_list(struct ctl *);
static int	types_add(struct ctl *, int, char **);

/* ctl_call, with "no such event or rule" (EA004) as exit 3. */
static int
ev_call(struct ctl *ctl, enum db_stmt s, const char *const *params,
    PGresult **res)
{
	int	r;

	if ((r = ctl_call(ctl, s, params, res)) != 0 &&
	    strcmp(ctl->db.sqlstate, "EA004") == 0)
		return EAV_EXIT_NOT_FOUND;
	return r;
}

/* events [-s state] [-t type] [-S source] [-n limit]: newest first. */
static int
events_list(struct ctl *ctl, int argc, char **argv)
{
	static const char *const hdr[] = { "id", "source", "type", "key",
	    "state", "task", "depth", "received", "error" };
	const char	*params[4] = { NULL, NULL, NULL, "50" };
	PGresult	*res;
	int		 ch, r;

	while ((ch = getopt(argc, argv, "s:t:S:n:")) != -1) {
		switch (ch) {
		case 's':
			params[0] = optarg;
			break;
		case 't':
			params[1] = optarg;
			break;
		case 'S':
			params[2] = optarg;
			break;
		case 'n':
			params[3] = optarg;
			break;
		default:
			return ctl_usage("events");
		}
	}
	if (optind != argc)
		return ctl_usage("events");
	if ((r = ev_call(ctl, DB_EVENTS_LIST, params, &res)) != 0)
		return r;
	table_print(res, hdr, 0);
	PQclear(res);
	return 0;
}

/* events show id: every field of one event, its body cut at 4 KiB. */
static int
events_show(struct ctl *ctl, const char *id)
{
	static const char *const names[] = { "id", "source", "type",
	    "event_key", "state", "task", "rule", "trace", "parent_task",
	    "depth", "received", "processed", "classifier_attempts", "error",
	    "body" };
	const char	*params[1] = { id };
	PGresult	*res;
	int		 r, c;

	if ((r = ev_call(ctl, DB_EVENT_SHOW, params, &res)) != 0)
		return r;
	if (PQntuples(res) == 0) {
		fprintf(stderr, "eavctl: no event %s\n", id);
		PQclear(res);
		return EAV_EXIT_NOT_FOUND;
	}
	for (c = 0; c < PQnfields(res) && c < 15; c++)
		printf("%-20s %s\n", names[c], PQgetvalue(res, 0, c));
	PQclear(res);
	return 0;
}

/* events release id: the held event's task is created, past its gate. */
static int
events_release(struct ctl *ctl, const char *id)
{
	const char	*params[2] = { id, ctl->actor };
	PGresult	*res;
	int		 r;

	if ((r = ev_call(ctl, DB_EVENT_RELEASE, params, &res)) != 0)
		return r;
	if (strcmp(PQgetvalue(res, 0, 0), "-") == 0)
		printf("event %s released; no task: %s\n", id,
		    PQgetvalue(res, 0, 1));
	else
		printf("event %s released; task %s\n", id,
		    PQgetvalue(res, 0, 0));
	PQclear(res);
	return 0;
}

/* events drop -r reason id */
static int
events_drop(struct ctl *ctl, int argc, char **argv)
{
	const char	*params[3] = { NULL, NULL, ctl->actor };
	PGresult	*res;
	int		 ch, r;

	while ((ch = getopt(argc, argv, "r:")) != -1) {
		if (ch != 'r')
			return ctl_usage("events");
		params[1] = optarg;
	}
	if (argc - optind != 1 || params[1] == NULL)
		return ctl_usage("events");
	params[0] = argv[optind];
	if ((r = ev_call(ctl, DB_EVENT_DROP, params, &res)) != 0)
		return r;
	printf("event %s dropped\n", params[0]);
	PQclear(res);
	return 0;
}

/* eavctl events ...: dispatches on the verb; none lists. */
int
cmd_events(struct ctl *ctl, int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "show") == 0)
		return events_show(ctl, argv[2]);
	if (argc == 3 && strcmp(argv[1], "release") == 0)
		return events_release(ctl, argv[2]);
	if (argc >= 2 && strcmp(argv[1], "drop") == 0)
		return events_drop(ctl, argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "list") == 0)
		return events_list(ctl, argc - 1, argv + 1);
	return events_list(ctl, argc, argv);
}

/* rules [list]: every rule not removed, with its gate's counts. */
static int
rules_list(struct ctl *ctl)
{
	static const char *const hdr[] = { "name", "type", "source",
	    "priority", "state", "debounce_ms", "per_minute", "fires",
	    "blocks", "held", "last_fired", "predicates", "template" };
	PGresult	*res;
	int		 r;

	if ((r = ev_call(ctl, DB_RULES_LIST, NULL, &res)) != 0)
		return r;
	table_print(res, hdr, 0);
	PQclear(res);
	return 0;
}

/*
 * rules add [-s source] [-w predicates] [-p priority] [-d debounce_ms]
 * [-r max_per_minute] name type template
 */
static int
rules_add(struct ctl *ctl, int argc, char **argv)
{
	const char	*params[9] = { NULL, NULL, NULL, "[]", NULL, "100", "0",
			    "60", ctl->actor };
	PGresult	*res;
	int		 ch, r;

	while ((ch = getopt(argc, argv, "s:w:p:d:r:")) != -1) {
		switch (ch) {
		case 's':
			params[2] = optarg;
			break;
		case 'w':
			params[3] = optarg;
			break;
		case 'p':
			params[5] = optarg;
			break;
		case 'd':
			params[6] = optarg;
			break;
		case 'r':
			params[7] = optarg;
			break;
		default:
			return ctl_usage("rules");
		}
	}
	if (argc - optind != 3)
		return ctl_usage("rules");
	params[0] = argv[optind];
	params[1] = argv[optind + 1];
	params[4] = argv[optind + 2];
	if ((r = ev_call(ctl, DB_RULE_ADD, params, &res)) != 0)
		return r;
	printf("rule %s added (id %s)\n", params[0], PQgetvalue(res, 0, 0));
	PQclear(res);
	return 0;
}

/* rules enable|disable|rm name */
static int
rules_change(struct ctl *ctl, const char *verb, const char *name)
{
	const char	*params[2] = { name, ctl->actor };
	enum db_stmt	 s;
	PGresult	*res;
	int		 r;

	if (strcmp(verb, "enable") == 0)
		s = DB_RULE_ENABLE;
	else if (strcmp(verb, "disable") == 0)
		s = DB_RULE_DISABLE;
	else if (strcmp(verb, "rm") == 0 || strcmp(verb, "remove") == 0)
		s = DB_RULE_REMOVE;
	else
		return ctl_usage("rules");
	if ((r = ev_call(ctl, s, params, &res)) != 0)
		return r;
	printf("rule %s %s\n", name, s == DB_RULE_ENABLE ? "enabled" :
	    s == DB_RULE_DISABLE ? "disabled" : "removed");
	PQclear(res);
	return 0;
}

/* eavctl rules ...: dispatches on the verb; none lists. */
int
cmd_rules(struct ctl *ctl, int argc, char **argv)
{
	if (argc == 1 || (argc == 2 && strcmp(argv[1], "list") == 0))
		return rules_list(ctl);
	if (argc >= 2 && strcmp(argv[1], "add") == 0)
		return rules_add(ctl, argc - 1, argv + 1);
	if (argc == 3)
		return rules_change(ctl, argv[1], argv[2]);
	return ctl_usage("rules");
}

/* event-types [list] */
static int
types_list(struct ctl *ctl)
{
	static const char *const hdr[] = { "name", "sources", "max_bytes",
	    "window_s", "routed_by", "rules", "description" };
	PGresult	*res;
	int		 r;

	if ((r = ev_call(ctl, DB_EVENT_TYPES_LIST, NULL, &res)) != 0)
		return r;
	table_print(res, hdr, 0);
	PQclear(res);
	return 0;
}

/*
 * event-types add [-s source,...] [-m max_bytes] [-w window_s]
 * [-d description] name schema: adds or replaces the type.
 */
static int
types_add(struct ctl *ctl, int argc, char **argv)
{
	const char	*params[7] = { NULL, NULL, NULL, NULL, NULL, NULL,
			    ctl->actor };
	PGresult	*res;
	int		 ch, r;

	while ((ch = getopt(argc, argv, "s:m:w:d:")) != -1) {
		switch (ch) {
		case 's':
			params[2] = optarg;
			break;
		case 'm':
			params[3] = optarg;
			break;
		case 'w':
			params[4] = optarg;
			break;
		case 'd':
			params[5] = optarg;
			break;
		default:
			return ctl_usage("event-types");
		}
	}
	if (argc - optind != 2)
		return ctl_usage("event-types");
	params[0] = argv[optind];
	params[1] = argv[optind + 1];
	if ((r = ev_call(ctl, DB_EVENT_TYPE_SET, params, &res)) != 0)
		return r;
	printf("event type %s set\n", params[0]);
	PQclear(res);
	return 0;
}

/* eavctl event-types ...: list or add. */
int
cmd_event_types(struct ctl *ctl, int argc, char **argv)
{
	if (argc == 1 || (argc == 2 && strcmp(argv[1], "list") == 0))
		return types_list(ctl);
	if (argc >= 2 && strcmp(argv[1], "add") == 0)
		return types_add(ctl, argc - 1, argv + 1);
	return ctl_usage("event-types");
}
