/*
 * Armed specs come from EAV_INJECT at start:
 *   point=action[:arg][,count=N][,step=ID][,tool=NAME][;...]
 * with action crash (SIGKILL self), delay:<ms>, error, exit:<code> or
 * drop (the database connection).  A spec fires count times (default:
 * every time) when its step and tool match.  Every firing is logged at
 * warning level and counted.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "inject.h"
#include "log.h"

#define INJECT_MAX_SPECS 16

enum inject_action { ACT_CRASH, ACT_DELAY, ACT_ERROR, ACT_EXIT, ACT_DROP };

struct inject_spec {
	enum inject_point	point;
	enum inject_action	action;
	long			arg;
	long			count;		/* -1: unlimited */
	long long		step;		/* 0: any */
	char			tool[64];	/* "": any */
};

volatile int			inject_armed;
static struct inject_spec	specs[INJECT_MAX_SPECS];
static int			nspecs;
static long			fired[INJ_NPOINTS];

static const char *const point_names[INJ_NPOINTS] = {
#define INJECT_POINT(id, name) [id] = name,
#include "points.def"
#undef INJECT_POINT
};

static int	inject_parse_option(struct inject_spec *, const char *, char *,
		    size_t);
static void	inject_do(const struct inject_spec *);

/* Returns the name of a point. */
const char *
inject_point_name(enum inject_point p)
{
	return point_names[p];
}

/* Returns how many times a point has fired in this process. */
long
inject_fired(enum inject_point p)
{
	return fired[p];
}

static int
inject_parse_option(struct inject_spec *sp, const char *opt, char *err,
    size_t errlen)
{
	char	*end;

	if (strncmp(opt, "count=", 6) == 0) {
		sp->count = strtol(opt + 6, &end, 10);
		if (*end != '\0' || sp->count < 1)
			goto bad;
	} else if (strncmp(opt, "step=", 5) == 0) {
		sp->step = strtoll(opt + 5, &end, 10);
		if (*end != '\0' || sp->step < 1)
			goto bad;
	} else if (strncmp(opt, "tool=", 5) == 0) {
		if (strlen(opt + 5) >= sizeof(sp->tool))
			goto bad;
		snprintf(sp->tool, sizeof(sp->tool), "%s", opt + 5);
	} else
		goto bad;
	return 0;
bad:
	snprintf(err, errlen, "invalid injection option \"%s\"", opt);
	return -1;
}

/* Parses one spec (point=action...) and arms it. */
int
inject_arm(const char *text, char *err, size_t errlen)
{
	struct inject_spec	 sp;
	char			 buf[256], *eq, *act, *opt, *save, *colon;
	int			 i;

	if (nspecs == INJECT_MAX_SPECS) {
		snprintf(err, errlen, "too many injection specs");
		return -1;
	}
	memset(&sp, 0, sizeof(sp));
	sp.count = -1;
	snprintf(buf, sizeof(buf), "%s", text);
	if ((eq = strchr(buf, '=')) == NULL) {
		snprintf(err, errlen, "injection spec \"%s\" has no '='", text);
		return -1;
	}
	*eq = '\0';
	for (i = 0; i < INJ_NPOINTS; i++)
		if (strcmp(buf, point_names[i]) == 0)
			break;
	if (i == INJ_NPOINTS) {
		snprintf(err, errlen, "unknown injection point \"%s\"", buf);
		return -1;
	}
	sp.point = i;
	act = strtok_r(eq + 1, ",", &save);
	if (act == NULL)
		act = "";
	if ((colon = strchr(act, ':')) != NULL) {
		*colon++ = '\0';
		sp.arg = strtol(colon, NULL, 10);
	}
	if (strcmp(act, "crash") == 0)
		sp.action = ACT_CRASH;
	else if (strcmp(act, "delay") == 0 && colon != NULL && sp.arg >= 0)
		sp.action = ACT_DELAY;
	else if (strcmp(act, "error") == 0)
		sp.action = ACT_ERROR;
	else if (strcmp(act, "exit") == 0 && colon != NULL)
		sp.action = ACT_EXIT;
	else if (strcmp(act, "drop") == 0)
		sp.action = ACT_DROP;
	else {
		snprintf(err, errlen, "unknown injection action \"%s\" (crash, "
		    "delay:<ms>, error, exit:<code>, drop)", act);
		return -1;
	}
	while ((opt = strtok_r(NULL, ",", &save)) != NULL)
		if (inject_parse_option(&sp, opt, err, errlen) == -1)
			return -1;
	specs[nspecs++] = sp;
	inject_armed = 1;
	return 0;
}

/* Arms the specs of EAV_INJECT, if set.  Returns 0 or -1 with err. */
int
inject_init_env(char *err, size_t errlen)
{
	const char	*env = getenv("EAV_INJECT");
	char		*copy, *spec, *save;
	int		 r = 0;

	if (env == NULL || *env == '\0')
		return 0;
	if ((copy = strdup(env)) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	for (spec = strtok_r(copy, ";", &save); spec != NULL && r == 0;
	    spec = strtok_r(NULL, ";", &save))
		r = inject_arm(spec, err, errlen);
	free(copy);
	return r;
}

static void
inject_do(const struct inject_spec *sp)
{
	struct timespec	ts;

	switch (sp->action) {
	case ACT_CRASH:
		kill(getpid(), SIGKILL);
		for (;;)
			pause();
	case ACT_EXIT:
		_exit((int)sp->arg);
	case ACT_DELAY:
		ts.tv_sec = sp->arg / 1000;
		ts.tv_nsec = (sp->arg % 1000) * 1000000;
		while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
			;
		break;
	case ACT_ERROR:
	case ACT_DROP:
		break;
	}
}

/*
 * Fires the first armed spec of point p that matches the step and tool.
 * Returns what the caller must do.
 */
int
inject_fire(enum inject_point p, long long step, const char *tool)
{
	static const char *const acts[] = { "crash", "delay", "error", "exit",
	    "drop" };
	struct inject_spec	*sp;
	int			 i;

	for (i = 0; i < nspecs; i++) {
		sp = &specs[i];
		if (sp->point != p || sp->count == 0 ||
		    (sp->step != 0 && sp->step != step) ||
		    (sp->tool[0] != '\0' &&
		    (tool == NULL || strcmp(sp->tool, tool) != 0)))
			continue;
		if (sp->count > 0)
			sp->count--;
		fired[p]++;
		log_warnx("injection point %s fired: %s arg=%ld step=%lld "
		    "tool=%s", point_names[p], acts[sp->action], sp->arg, step,
		    tool ? tool : "-");
		inject_do(sp);
		if (sp->action == ACT_ERROR)
			return INJECT_ERROR;
		if (sp->action == ACT_DROP)
			return INJECT_DROP;
		return INJECT_PASS;
	}
	return INJECT_PASS;
}
