/*
 * Failure injection points.  INJECT() costs one predictable branch while
 * nothing is armed, so the points stay in production builds: operators
 * rehearse failures on the binaries they run.
 */
#ifndef EAV_INJECT_INJECT_H
#define EAV_INJECT_INJECT_H

#include <stddef.h>

/* Actions a point takes besides crash and exit (delay would block eavd). */
#define INJ_ACT_ERROR	0x1
#define INJ_ACT_DROP	0x2
#define INJ_ACT_DELAY	0x4

enum inject_point {
#define INJECT_POINT(id, name, acts) id,
#include "points.def"
#undef INJECT_POINT
	INJ_NPOINTS
};

enum inject_result {
	INJECT_PASS = 0,	/* carry on */
	INJECT_ERROR,		/* the caller takes its error path */
	INJECT_DROP		/* the caller drops its database connection */
};

/*
 * Takes one firing of database spec id (for step): 1 taken, 0 used up or
 * disarmed, -1 the database could not say.
 */
typedef int	(*inject_taker)(long long, long long);

extern volatile int	inject_armed;

int		 inject_init_env(char *, size_t);
int		 inject_arm(const char *, char *, size_t);
int		 inject_validate(const char *, char *, size_t);
int		 inject_point_actions(enum inject_point);
int		 inject_arm_db(long long, const char *, const char *, long,
		    long long, const char *, char *, size_t);
void		 inject_clear_db(void);
void		 inject_set_taker(inject_taker);
int		 inject_point_find(const char *);
int		 inject_pick(enum inject_point, long long, const char *,
		    long long *);
int		 inject_act(enum inject_point, long long, long long,
		    const char *);
void		 inject_used_up(long long);
int		 inject_fire(enum inject_point, long long, const char *);
const char	*inject_point_name(enum inject_point);
long		 inject_fired(enum inject_point);

#define INJECT(p, step, tool)						\
	(__builtin_expect(inject_armed, 0) ?				\
	    inject_fire((p), (step), (tool)) : INJECT_PASS)

#endif
