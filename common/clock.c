/*
 * Time for timers and back-off.  CLOCK_MONOTONIC, so a wall-clock step
 * neither fires nor delays a restart.
 */
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"

/* Milliseconds on the monotonic clock. */
int64_t
clock_ms(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Seeds random() differently in each process. */
void
clock_seed(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	srandom((unsigned)(ts.tv_nsec ^ (getpid() << 16)));
}

/* A random delay between ms/2 and ms, so that peers do not move in step. */
int
clock_jitter(int ms)
{
	if (ms < 2)
		return ms;
	return ms / 2 + (int)(random() % (ms / 2 + 1));
}

/* A timeval of ms milliseconds, for evtimer_add. */
struct timeval
clock_tv(int64_t ms)
{
	struct timeval	tv;

	tv.tv_sec = ms / 1000;
	tv.tv_usec = (ms % 1000) * 1000;
	return tv;
}
