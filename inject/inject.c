/*
 * Armed specs come from EAV_INJECT at start:
 *   point=action[:arg][,count=N][,step=ID][,tool=NAME][;...]
 * with action crash (SIGKILL self), delay:<ms>, error, exit:<code> or
 * drop (the database connection), and live from eav.inject_points
 * (inject_db.c).  A spec fires count times (default: every time) when its
 * step and tool match; the count of a live spec is kept in the database,
 * for all processes, and each firing is taken there before it acts.
 * Every firing is logged at warning level and counted.
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

#define INJECT_MAX_SPECS 64	/* eav.inject_points allows as many */

enum inject_action { ACT_CRASH, ACT_DELAY, ACT_ERROR, ACT_EXIT, ACT_DROP };

struct inject_spec {
	enum inject_point	point;
	enum inject_action	action;
	long			arg;
	long			count;		/* -1: unlimited */
	long long		step;		/* 0: any */
	char			tool[64];	/* "": any */
	long long		dbid;		/* inject_points.id; 0: env */
};

volatile int			inject_armed;
static struct inject_spec	specs[INJECT_MAX_SPECS];
static int			nspecs;
static long			fired[INJ_NPOINTS];
static inject_taker		taker;

static const char *const point_names[INJ_NPOINTS] = {
#define INJECT_POINT(id, name, acts) [id] = name,
#include "points.def"
#undef INJECT_POINT
};

/* The actions besides crash, delay and exit each point has a path for. */
static const int point_actions[INJ_NPOINTS] = {
#define INJECT_POINT(id, name, acts) [id] = acts,
#include "points.def"
#undef INJECT_POINT
};

static const char *const action_names[] = { "crash", "delay", "error",
    "exit", "drop" };

static int	inject_parse_option(struct inject_spec *, const char *, char *,
		    size_t);
static int	inject_parse(const char *, struct inject_spec *, char *,
		    size_t);
static void	inject_do(const struct inject_spec *);

/* Returns the name of a point. */
const char *
inject_point_name(enum inject_point p)
{
	return point_names[p];
}

/* Returns the INJ_ACT_* flags of the actions a point has a path for. */
int
inject_point_actions(enum inject_point p)
{
	return point_actions[p];
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

/* Looks a point up by name; -1 if there is none. */
int
inject_point_find(const char *name)
{
	int	i;

	for (i = 0; i < INJ_NPOINTS; i++)
		if (strcmp(name, point_names[i]) == 0)
			return i;
	return -1;
}

/*
 * Fills the point and action of a spec, refusing an action the point has
 * no path for (an error where nothing can fail would silently do nothing).
 */
static int
inject_set(struct inject_spec *sp, const char *point, const char *act,
    char *err, size_t errlen)
{
	int	p, a;

	if ((p = inject_point_find(point)) == -1) {
		snprintf(err, errlen, "unknown injection point \"%s\"", point);
		return -1;
	}
	for (a = 0; a <= ACT_DROP; a++)
		if (strcmp(act, action_names[a]) == 0)
			break;
	if (a > ACT_DROP) {
		snprintf(err, errlen, "unknown injection action \"%s\" (crash, "
		    "delay:<ms>, error, exit:<code>, drop)", act);
		return -1;
	}
	if ((a == ACT_ERROR && !(point_actions[p] & INJ_ACT_ERROR)) ||
	    (a == ACT_DROP && !(point_actions[p] & INJ_ACT_DROP)) ||
	    (a == ACT_DELAY && !(point_actions[p] & INJ_ACT_DELAY))) {
		snprintf(err, errlen, "injection point %s has no %s path",
		    point, act);
		return -1;
	}
	sp->point = p;
	sp->action = a;
	return 0;
}

/* Adds a parsed spec to the armed ones. */
static int
inject_push(const struct inject_spec *sp, char *err, size_t errlen)
{
	if (nspecs == INJECT_MAX_SPECS) {
		snprintf(err, errlen, "too many injection specs");
		return -1;
	}
	specs[nspecs++] = *sp;
	inject_armed = 1;
	return 0;
}

/* Parses one spec (point=action...) without arming it. */
static int
inject_parse(const char *text, struct inject_spec *out, char *err,
    size_t errlen)
{
	struct inject_spec	 sp;
	char			 buf[256], *eq, *act, *opt, *save, *colon, *end;

	memset(&sp, 0, sizeof(sp));
	sp.count = -1;
	if (strlen(text) >= sizeof(buf)) {
		snprintf(err, errlen, "injection spec too long");
		return -1;
	}
	snprintf(buf, sizeof(buf), "%s", text);
	if ((eq = strchr(buf, '=')) == NULL) {
		snprintf(err, errlen, "injection spec \"%s\" has no '='", text);
		return -1;
	}
	*eq = '\0';
	act = strtok_r(eq + 1, ",", &save);
	if (act == NULL)
		act = "";
	if ((colon = strchr(act, ':')) != NULL) {
		*colon++ = '\0';
		sp.arg = strtol(colon, &end, 10);
		if (*colon == '\0' || *end != '\0' || sp.arg < 0 ||
		    sp.arg > 3600000) {
			snprintf(err, errlen, "invalid injection argument "
			    "\"%s\"", colon);
			return -1;
		}
	}
	if (inject_set(&sp, buf, act, err, errlen) == -1)
		return -1;
	if ((sp.action == ACT_DELAY || sp.action == ACT_EXIT) &&
	    colon == NULL) {
		snprintf(err, errlen, "injection action %s needs an argument "
		    "(%s:<n>)", act, act);
		return -1;
	}
	while ((opt = strtok_r(NULL, ",", &save)) != NULL)
		if (inject_parse_option(&sp, opt, err, errlen) == -1)
			return -1;
	*out = sp;
	return 0;
}

/* Checks a spec as inject_arm would, arming nothing (eavctl inject). */
int
inject_validate(const char *text, char *err, size_t errlen)
{
	struct inject_spec	sp;

	return inject_parse(text, &sp, err, errlen);
}

/* Parses one spec (point=action...) and arms it. */
int
inject_arm(const char *text, char *err, size_t errlen)
{
	struct inject_spec	sp;

	if (inject_parse(text, &sp, err, errlen) == -1)
		return -1;
	return inject_push(&sp, err, errlen);
}

/* Arms a spec read from eav.inject_points (already checked there). */
int
inject_arm_db(long long dbid, const char *point, const char *act, long arg,
    long long step, const char *tool, char *err, size_t errlen)
{
	struct inject_spec	sp;

	memset(&sp, 0, sizeof(sp));
	sp.count = -1;
	sp.dbid = dbid;
	sp.arg = arg;
	sp.step = step;
	if (tool != NULL)
		snprintf(sp.tool, sizeof(sp.tool), "%s", tool);
	if (inject_set(&sp, point, act, err, errlen) == -1)
		return -1;
	return inject_push(&sp, err, errlen);
}

/* Drops the specs that came from the database, before loading them again. */
void
inject_clear_db(void)
{
	int	i, n = 0;

	for (i = 0; i < nspecs; i++)
		if (specs[i].dbid == 0)
			specs[n++] = specs[i];
	nspecs = n;
	inject_armed = nspecs > 0;
}

/* Sets who takes a database-armed firing before it acts. */
void
inject_set_taker(inject_taker fn)
{
	taker = fn;
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

static int
spec_matches(const struct inject_spec *sp, enum inject_point p,
    long long step, const char *tool)
{
	return sp->point == p && sp->count != 0 &&
	    (sp->step == 0 || sp->step == step) &&
	    (sp->tool[0] == '\0' ||
	    (tool != NULL && strcmp(sp->tool, tool) == 0));
}

/*
 * Finds the first armed spec of point p matching step and tool, without
 * firing it.  Returns 1 with its handle (the eav.inject_points id, or
 * minus one minus its index when it came from EAV_INJECT), else 0.
 */
int
inject_pick(enum inject_point p, long long step, const char *tool,
    long long *handle)
{
	int	i;

	for (i = 0; i < nspecs; i++)
		if (spec_matches(&specs[i], p, step, tool)) {
			*handle = specs[i].dbid != 0 ? specs[i].dbid : -1 - i;
			return 1;
		}
	return 0;
}

/* A database spec whose firings are used up elsewhere stops asking. */
void
inject_used_up(long long handle)
{
	int	i;

	for (i = 0; i < nspecs; i++)
		if (handle > 0 && specs[i].dbid == handle)
			specs[i].count = 0;
}

/*
 * Fires the spec a handle names (its firing already taken, for a
 * database spec): logs, counts and acts.  Returns what the caller must
 * do; INJECT_PASS if the spec was disarmed meanwhile.
 */
int
inject_act(enum inject_point p, long long handle, long long step,
    const char *tool)
{
	struct inject_spec	*sp = NULL;
	int			 i;

	if (handle < 0 && -1 - handle < nspecs)
		sp = &specs[-1 - handle];
	for (i = 0; handle > 0 && i < nspecs; i++)
		if (specs[i].dbid == handle)
			sp = &specs[i];
	if (sp == NULL || sp->point != p)
		return INJECT_PASS;
	if (sp->count > 0)
		sp->count--;
	fired[p]++;
	log_warnx("injection point %s fired: %s arg=%ld step=%lld tool=%s%s",
	    point_names[p], action_names[sp->action], sp->arg, step,
	    tool ? tool : "-", sp->dbid != 0 ? " (armed in eav.inject_points)" :
	    "");
	inject_do(sp);
	if (sp->action == ACT_ERROR)
		return INJECT_ERROR;
	if (sp->action == ACT_DROP)
		return INJECT_DROP;
	return INJECT_PASS;
}

/*
 * Fires the first armed spec of point p that matches the step and tool,
 * a database spec only once its firing is taken.  Returns what the
 * caller must do.
 */
int
inject_fire(enum inject_point p, long long step, const char *tool)
{
	long long	h;
	int		t;

	while (inject_pick(p, step, tool, &h)) {
		if (h < 0)
			return inject_act(p, h, step, tool);
		t = taker != NULL ? taker(h, step) : -1;
		if (t == 1)
			return inject_act(p, h, step, tool);
		if (t == -1)
			return INJECT_PASS;
		inject_used_up(h);
	}
	return INJECT_PASS;
}
