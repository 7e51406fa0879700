/* eavctl queue: list the queues, create one or change its settings. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "exitcode.h"

static int	queue_list(struct ctl *);
static int	queue_set(struct ctl *, int, char **);

/* queue list: every queue and its retry settings. */
static int
queue_list(struct ctl *ctl)
{
	static const char *const hdr[] = { "queue", "max_attempts",
	    "retry_base_ms", "retry_max_ms", "description" };
	PGresult	*res;
	int		 r;

	if ((r = ctl_call(ctl, DB_QUEUE_LIST, NULL, &res)) != 0)
		return r;
	table_print(res, hdr, 0);
	PQclear(res);
	return 0;
}

/*
 * queue set [-m max_attempts] [-b retry_base_ms] [-x retry_max_ms]
 * [-d description] name: values are checked by eav.queue_set, which names
 * the one it refuses.
 */
static int
queue_set(struct ctl *ctl, int argc, char **argv)
{
	const char	*params[6] = { NULL, NULL, NULL, NULL, NULL,
			    ctl->actor };
	PGresult	*res;
	int		 ch, r;

	while ((ch = getopt(argc, argv, "m:b:x:d:")) != -1) {
		switch (ch) {
		case 'm':
			params[1] = optarg;
			break;
		case 'b':
			params[2] = optarg;
			break;
		case 'x':
			params[3] = optarg;
			break;
		case 'd':
			params[4] = optarg;
			break;
		default:
			return ctl_usage("queue");
		}
	}
	if (argc - optind != 1)
		return ctl_usage("queue");
	params[0] = argv[optind];
	if ((r = ctl_call(ctl, DB_QUEUE_SET, params, &res)) != 0)
		return r;
	printf("queue %s %s\n", params[0], PQgetvalue(res, 0, 0));
	PQclear(res);
	return 0;
}

/* queue stuck name ms: the queue's stuck-step alarm threshold. */
static int
queue_stuck(struct ctl *ctl, const char *name, const char *ms)
{
	const char	*params[3] = { name, ms, ctl->actor };
	PGresult	*res;
	int		 r;

	if ((r = ctl_call(ctl, DB_QUEUE_STUCK, params, &res)) != 0)
		return r;
	printf("queue %s: stuck after %s ms\n", name, ms);
	PQclear(res);
	return 0;
}

/* queue recursion name max_depth max_trace_tasks ("-" keeps one) */
static int
queue_recursion(struct ctl *ctl, char **argv)
{
	const char	*params[4] = { argv[0], argv[1], argv[2], ctl->actor };
	PGresult	*res;
	int		 r;

	if (strcmp(argv[1], "-") == 0)
		params[1] = NULL;
	if (strcmp(argv[2], "-") == 0)
		params[2] = NULL;
	if ((r = ctl_call(ctl, DB_QUEUE_RECURSION, params, &res)) != 0)
		return r;
	printf("queue %s: recursion limits set\n", argv[0]);
	PQclear(res);
	return 0;
}

/* eavctl queue list | set ... | stuck name ms | recursion name d n */
int
cmd_queue(struct ctl *ctl, int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "list") == 0)
		return queue_list(ctl);
	if (argc >= 2 && strcmp(argv[1], "set") == 0)
		return queue_set(ctl, argc - 1, argv + 1);
	if (argc == 4 && strcmp(argv[1], "stuck") == 0)
		return queue_stuck(ctl, argv[2], argv[3]);
	if (argc == 5 && strcmp(argv[1], "recursion") == 0)
		return queue_recursion(ctl, argv + 2);
	return ctl_usage("queue");
}
