/*
 * eav.conf: one INI file read by eavd and every child.  Options, their
 * defaults, ranges and help live in one table in config.c; nothing else
 * knows a default.
 */
#ifndef EAV_COMMON_CONFIG_H
#define EAV_COMMON_CONFIG_H

#include <stddef.h>
#include <stdio.h>

/*
 * Long-lived tool processes (MCP servers) a worker may have at once, on
 * top of one program per running step: eavd sizes its list of a
 * worker's tool process groups for both (twice this: a server replaced
 * may not be reaped yet when its successor starts).
 */
#define EAV_TOOL_SERVERS_MAX	8

/*
 * Watcher probes the producer runs at once: eavd sizes its list of the
 * producer's process groups for them.
 */
#define EAV_PRODUCER_PROBES_MAX	32

struct eav_config {
	char	*path;			/* file read, or NULL for defaults */
	char	*dsn;
	int	 child_roles;		/* children log in as eav_<kind> */
	char	*node_name;
	int	 log_level;

	int	 workers;
	int	 restart_backoff_min;	/* durations are in ms */
	int	 restart_backoff_max;
	int	 restart_intensity;
	int	 restart_period;
	int	 restart_stable;
	int	 shutdown_grace;
	int	 startup_timeout;
	int	 sweep_interval;

	int	 worker_concurrency;
	int	 worker_batch_size;
	int	 worker_poll_interval;
	char	*worker_queues;
	int	 worker_reconnect_max;
	int	 worker_db_lost_exit;

	int	 producer_batch_size;
	int	 producer_poll_interval;
	int	 producer_demo;
	int	 producer_demo_rate;
	int	 producer_schedule_interval;
	char	*producer_classifier;	/* exec tool name, or "" */

	int	 audit_seal_interval;
};

int	config_load(struct eav_config *, const char *, char *, size_t);
void	config_free(struct eav_config *);
void	config_print(const struct eav_config *, FILE *);
int	config_send(int, const struct eav_config *);
int	config_receive(int, struct eav_config *, char *, size_t);
int	config_reloadable_diff(const struct eav_config *,
	    const struct eav_config *, char *, size_t);

#endif
