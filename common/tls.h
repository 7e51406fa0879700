/*
 * TLS client connections for libevent (common/tls.c): the http tool's
 * calls and the producer's https watcher probes.
 */
#ifndef EAV_TLS_H
#define EAV_TLS_H

#include <stddef.h>

struct bufferevent;
struct event_base;

struct bufferevent *tls_bufferevent(struct event_base *, const char *,
	    const char *, int *, char *, size_t);
const char *tls_verify_reason(int);
const char *tls_bev_error(struct bufferevent *);
void	tls_free(void);

#endif
