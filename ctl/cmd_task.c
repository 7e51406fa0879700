/*
 * Task and step commands: enqueue, tasks, show, retry, cancel, resolve,
 * and event (an inbox event for the producer).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ctl.h"
#include "exitcode.h"

static int	parse_id(const char *, const char *);
static int	enqueue_steps(int, char **, const char *, const char *,
		    const char *, int, char **);
static json_t	*parse_json_arg(const char *, const char *);

/* Checks that s is a positive integer; prints why not. */
static int
parse_id(const char *what, const char *s)
{
	char		*end;
	long long	 v = strtoll(s, &end, 10);

	if (*s == '\0' || *end != '\0' || v <= 0) {
		fprintf(stderr, "eavctl: %s must be a positive integer, not "
		    "\"%s\"\n", what, s);
		return -1;
	}
	return 0;
}

/* Parses a JSON argument strictly; prints why not and returns NULL. */
static json_t *
parse_json_arg(const char *what, const char *text)
{
	json_error_t	 jerr;
	json_t		*j;

	j = json_loads(text, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
	if (j == NULL)
		fprintf(stderr, "eavctl: %s is not valid JSON: %s (column "
		    "%d)\n", what, jerr.text, jerr.column);
	return j;
}

/*
 * Builds the steps array of a one-step task from tool [input] and the
 * options; *out gets the JSON text (caller frees).  Returns 0 or 2.
 */
static int
enqueue_steps(int argc, char **argv, const char *max, const char *key,
    const char *steps, int approval, char **out)
{
	json_t	*arr, *step, *input = NULL;
	char	*end;
	long	 m;
	size_t	 i;

	if (steps != NULL) {
		if (argc != 0 || max != NULL || key != NULL)
			return ctl_usage("enqueue");
		if ((arr = parse_json_arg("steps", steps)) == NULL)
			return EAV_EXIT_USAGE;
	} else {
		if (argc < 1 || argc > 2)
			return ctl_usage("enqueue");
		if (argc == 2 && (input = parse_json_arg("input",
		    argv[1])) == NULL)
			return EAV_EXIT_USAGE;
		step = json_pack("{s:s}", "tool", argv[0]);
		if (input != NULL)
			json_object_set_new(step, "input", input);
		if (max != NULL) {
			m = strtol(max, &end, 10);
			if (*max == '\0' || *end != '\0') {
				fprintf(stderr, "eavctl: max_attempts must be "
				    "an integer, not \"%s\"\n", max);
				json_decref(step);
				return EAV_EXIT_USAGE;
			}
			json_object_set_new(step, "max_attempts",
			    json_integer(m));
		}
		if (key != NULL)
			json_object_set_new(step, "idempotency_key",
			    json_string(key));
		arr = json_pack("[o]", step);
	}
	/* -A: every step the spec leaves unmarked waits for an approval. */
	json_array_foreach(arr, i, step) {
		if (approval && json_is_object(step) &&
		    json_object_get(step, "requires_approval") == NULL)
			json_object_set_new(step, "requires_approval",
			    json_true());
	}
	*out = json_dumps(arr, JSON_COMPACT | JSON_ENCODE_ANY);
	json_decref(arr);
	return *out == NULL ? EAV_EXIT_USAGE : 0;
}

/* eavctl enqueue: prints the new task id. */
int
cmd_enqueue(struct ctl *ctl, int argc, char **argv)
{
	const char	*queue = "default", *kind = NULL, *max = NULL;
	const char	*key = NULL, *run_at = NULL, *steps = NULL;
	const char	*params[5];
	PGresult	*res;
	char		*json = NULL;
	int		 ch, r, approval = 0;

	while ((ch = getopt(argc, argv, "Ai:k:m:q:s:t:")) != -1) {
		switch (ch) {
		case 'A': approval = 1; break;
		case 'i': key = optarg; break;
		case 'k': kind = optarg; break;
		case 'm': max = optarg; break;
		case 'q': queue = optarg; break;
		case 's': steps = optarg; break;
		case 't': run_at = optarg; break;
		default: return ctl_usage("enqueue");
		}
	}
	if ((r = enqueue_steps(argc - optind, argv + optind, max, key, steps,
	    approval, &json)) != 0)
		return r;
	if (kind == NULL)
		kind = steps != NULL ? "task" : argv[optind];
	params[0] = queue;
	params[1] = kind;
	params[2] = json;
	params[3] = ctl->actor;
	params[4] = run_at;
	r = ctl_call(ctl, DB_TASK_ENQUEUE, params, &res);
	free(json);
	if (r != 0)
		return r;
	printf("%s\n", PQgetvalue(res, 0, 0));
	PQclear(res);
	return 0;
}

/* eavctl tasks: the most recent tasks, optionally filtered. */
int
cmd_tasks(struct ctl *ctl, int argc, char **argv)
{
	static const char *const hdr[] = { "id", "queue", "kind", "state",
	    "step", "step_state", "tool", "created" };
	const char	*params[3] = { NULL, NULL, "50" };
	PGresult	*res;
	int		 ch, r;

	while ((ch = getopt(argc, argv, "n:q:s:")) != -1) {
		switch (ch) {
		case 'n':
			if (parse_id("limit", optarg) == -1)
				return EAV_EXIT_USAGE;
			params[2] = optarg;
			break;
		case 'q': params[1] = optarg; break;
		case 's': params[0] = optarg; break;
		default: return ctl_usage("tasks");
		}
	}
	if (optind != argc)
		return ctl_usage("tasks");
	if ((r = ctl_call(ctl, DB_TASKS_LIST, params, &res)) != 0)
		return r;
	table_print(res, hdr, 0);
	PQclear(res);
	return 0;
}

/* eavctl show: a task, its steps and its audit trail. */
int
cmd_show(struct ctl *ctl, int argc, char **argv)
{
	static const char *const shdr[] = { "step", "ord", "tool", "state",
	    "attempts", "epoch", "idempotency_key", "worker", "held", "error",
	    "input", "result" };
	static const char *const ahdr[] = { "id", "at", "type", "outcome",
	    "actor", "step", "payload" };
	const char	*params[1];
	PGresult	*res;
	int		 r;

	if (argc != 2)
		return ctl_usage("show");
	if (parse_id("task id", argv[1]) == -1)
		return EAV_EXIT_USAGE;
	params[0] = argv[1];
	if ((r = ctl_call(ctl, DB_TASK_SHOW, params, &res)) != 0)
		return r;
	if (PQntuples(res) == 0) {
		fprintf(stderr, "eavctl: task %s does not exist\n", argv[1]);
		PQclear(res);
		return EAV_EXIT_USAGE;
	}
	printf("task %s  queue=%s  kind=%s  state=%s\n  trace=%s\n"
	    "  created %s by %s%s%s\n", PQgetvalue(res, 0, 0),
	    PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2),
	    PQgetvalue(res, 0, 3), PQgetvalue(res, 0, 4),
	    PQgetvalue(res, 0, 6), PQgetvalue(res, 0, 5),
	    PQgetisnull(res, 0, 7) ? "" : ", finished ",
	    PQgetvalue(res, 0, 7));
	PQclear(res);
	if ((r = ctl_call(ctl, DB_TASK_STEPS, params, &res)) != 0)
		return r;
	printf("\nsteps:\n");
	table_print(res, shdr, 2);
	PQclear(res);
	if ((r = ctl_call(ctl, DB_TASK_AUDIT, params, &res)) != 0)
		return r;
	printf("\naudit:\n");
	table_print(res, ahdr, 2);
	PQclear(res);
	return 0;
}

/* eavctl retry: re-activates a failed or cancelled task. */
int
cmd_retry(struct ctl *ctl, int argc, char **argv)
{
	const char	*params[2];
	PGresult	*res;
	int		 r;

	if (argc != 2)
		return ctl_usage("retry");
	if (parse_id("task id", argv[1]) == -1)
		return EAV_EXIT_USAGE;
	params[0] = argv[1];
	params[1] = ctl->actor;
	if ((r = ctl_call(ctl, DB_TASK_RETRY, params, &res)) != 0)
		return r;
	PQclear(res);
	printf("task %s retried\n", argv[1]);
	return 0;
}

/* eavctl cancel: cancels an active task. */
int
cmd_cancel(struct ctl *ctl, int argc, char **argv)
{
	const char	*params[3] = { NULL, ctl->actor, NULL };
	PGresult	*res;
	int		 ch, r;

	while ((ch = getopt(argc, argv, "r:")) != -1) {
		if (ch != 'r')
			return ctl_usage("cancel");
		params[2] = optarg;
	}
	if (argc - optind != 1)
		return ctl_usage("cancel");
	if (parse_id("task id", argv[optind]) == -1)
		return EAV_EXIT_USAGE;
	params[0] = argv[optind];
	if ((r = ctl_call(ctl, DB_TASK_CANCEL, params, &res)) != 0)
		return r;
	printf("task %s cancelled (%s step(s) cancelled)\n", argv[optind],
	    PQgetvalue(res, 0, 0));
	PQclear(res);
	return 0;
}

/* eavctl resolve: the operator's decision on a held step. */
int
cmd_resolve(struct ctl *ctl, int argc, char **argv)
{
	const char	*params[4] = { NULL, NULL, ctl->actor, NULL };
	PGresult	*res;
	int		 ch, r;

	while ((ch = getopt(argc, argv, "n:")) != -1) {
		if (ch != 'n')
			return ctl_usage("resolve");
		params[3] = optarg;
	}
	if (argc - optind != 2)
		return ctl_usage("resolve");
	if (parse_id("step id", argv[optind]) == -1)
		return EAV_EXIT_USAGE;
	params[0] = argv[optind];
	params[1] = argv[optind + 1];
	if ((r = ctl_call(ctl, DB_STEP_RESOLVE, params, &res)) != 0)
		return r;
	printf("step %s resolved: %s\n", argv[optind], PQgetvalue(res, 0, 0));
	PQclear(res);
	return 0;
}

/* eavctl event: puts an event in the inbox; prints its id. */
int
cmd_event(struct ctl *ctl, int argc, char **argv)
{
	const char	*params[5];
	PGresult	*res;
	int		 r;

	if (argc != 5)
		return ctl_usage("event");
	params[0] = argv[1];
	params[1] = argv[2];
	params[2] = argv[3];
	params[3] = argv[4];
	params[4] = ctl->actor;
	if ((r = ctl_call(ctl, DB_EVENT_SUBMIT, params, &res)) != 0)
		return r;
	printf("%s\n", PQgetvalue(res, 0, 0));
	PQclear(res);
	return 0;
}
