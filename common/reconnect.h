/*
 * Reconnection with jittered exponential back-off for a child's blocking
 * database connection.  After exit_after_ms without success the process
 * exits EAV_EXIT_DB_LOST, which eavd does not count as a crash.
 */
#ifndef EAV_COMMON_RECONNECT_H
#define EAV_COMMON_RECONNECT_H

#include <stdint.h>

#include <event2/event.h>

struct reconnect {
	struct event_base	*base;
	struct event		*timer;
	int64_t			 lost_since;	/* ms; 0 while connected */
	int			 backoff_ms;
	int			 max_ms;
	int			 exit_after_ms;
	int			(*try_connect)(void *);	/* 0 on success */
	void			(*on_up)(void *, int64_t);
	void			*arg;
};

void	reconnect_lost(struct reconnect *);
void	reconnect_free(struct reconnect *);

#endif
