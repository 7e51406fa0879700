/*
 * Exit codes shared by every eav process.  Children exit only through these,
 * and the supervisor's policy (supervisor/policy.c) switches on them.
 */
#ifndef EAV_COMMON_EXITCODE_H
#define EAV_COMMON_EXITCODE_H

#define EAV_EXIT_OK		0	/* asked to stop, stopped */
#define EAV_EXIT_FATAL		1	/* lost invariant: restart, counted */
#define EAV_EXIT_USAGE		2	/* bad command line or input (eavctl) */
#define EAV_EXIT_VIOLATION	3	/* eavctl check: invariant violated */
#define EAV_EXIT_NOT_FOUND	3	/* eavctl: no such object */
#define EAV_EXIT_DB_LOST	69	/* EX_UNAVAILABLE: database gone */
#define EAV_EXIT_TEMPFAIL	75	/* EX_TEMPFAIL: retryable */
#define EAV_EXIT_CONFIG		78	/* EX_CONFIG: wait for a reload */

#endif
