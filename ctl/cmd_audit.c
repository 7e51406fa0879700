/*
 * eavctl audit verify [--anchor FILE] and eavctl audit anchor FILE: the
 * hash chain of sql/0012_audit_chain.sql, checked from outside the
 * database.  verify recomputes every hash here, in C, from the raw
 * columns, so a function replaced in the database cannot vouch for
 * itself; anchor keeps the head in a file the database cannot rewrite.
 */
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "ctl.h"
#include "exitcode.h"
#include "xalloc.h"

#define HASH_LEN	32
#define HEX_LEN		(HASH_LEN * 2)
#define CHUNK_ROWS	"20000"
#define ANCHOR_MAGIC	"eav-audit-anchor 1"

/* Where the walk is: the last link that checked out. */
struct walk {
	long long	 seq;
	long long	 id;
	unsigned char	 prev[HASH_LEN];
	char		 why[256];	/* set when broken */
	long long	 bad_seq, bad_id;
};

struct anchor {
	long long	 seq, id;
	char		 hash[HEX_LEN + 1];
};

/* A growable byte buffer for the canonical form. */
struct buf {
	unsigned char	*p;
	size_t		 len, cap;
};

static void	buf_add(struct buf *, const void *, size_t);
static void	canon_field(struct buf *, const PGresult *, int, int);
static int	event_digest(const PGresult *, int, unsigned char *);
static int	link_hash(const unsigned char *, long long,
		    const unsigned char *, unsigned char *);
static int	hex_decode(const char *, unsigned char *);
static void	walk_fail(struct walk *, long long, const char *, ...)
		    __attribute__((format(printf, 3, 4)));
static int	walk_link(struct walk *, const PGresult *, int,
		    const PGresult *, int);
static int	walk_merge(struct walk *, const PGresult *,
		    const PGresult *);
static int	walk_chunk(struct ctl *, struct walk *, int *);
static int	walk_chain(struct ctl *, struct walk *);
static int	anchor_read(const char *, struct anchor *);
static int	anchor_check(struct ctl *, struct walk *,
		    const struct anchor *, const char *);
static int	verify_report(struct ctl *, const struct walk *);
static void	verify_alarm(struct ctl *, const struct walk *);
static int	verify_begin(struct ctl *);
static int	verify_walk(struct ctl *, struct walk *);
static int	audit_verify(struct ctl *, int, char **);
static int	anchor_write(const char *, const char *);
static int	audit_anchor(struct ctl *, int, char **);

static void
buf_add(struct buf *b, const void *p, size_t n)
{
	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2;
		b->p = xreallocarray(b->p, b->cap, 1);
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

/* One field as eav.audit_field writes it: N, or S<bytes>:<text>. */
static void
canon_field(struct buf *b, const PGresult *res, int row, int col)
{
	char	hdr[32];
	int	n, len;

	if (PQgetisnull(res, row, col)) {
		buf_add(b, "N", 1);
		return;
	}
	len = PQgetlength(res, row, col);
	n = snprintf(hdr, sizeof(hdr), "S%d:", len);
	buf_add(b, hdr, (size_t)n);
	buf_add(b, PQgetvalue(res, row, col), (size_t)len);
}

/*
 * sha256 of eav.audit_canonical of an event row of DB_AUDIT_EVENT_CHUNK
 * (its 10 columns are the canonical fields, in order): v2 with the role,
 * v1 without it for a row written before there was one (sql/0034).
 */
static int
event_digest(const PGresult *ev, int row, unsigned char *out)
{
	struct buf	b = { NULL, 0, 0 };
	int		col, ok, ncol = PQgetisnull(ev, row, 9) ? 9 : 10;

	buf_add(&b, ncol == 10 ? "eav.audit.v2" : "eav.audit.v1", 12);
	for (col = 0; col < ncol; col++)
		canon_field(&b, ev, row, col);
	ok = EVP_Digest(b.p, b.len, out, NULL, EVP_sha256(), NULL);
	free(b.p);
	return ok == 1 ? 0 : -1;
}

/* hash = sha256(prev || seq as 8 big-endian bytes || digest). */
static int
link_hash(const unsigned char *prev, long long seq,
    const unsigned char *digest, unsigned char *out)
{
	unsigned char	msg[HASH_LEN * 2 + 8];
	uint64_t	s = (uint64_t)seq;
	int		i;

	memcpy(msg, prev, HASH_LEN);
	for (i = 0; i < 8; i++)
		msg[HASH_LEN + i] = (unsigned char)(s >> (56 - 8 * i));
	memcpy(msg + HASH_LEN + 8, digest, HASH_LEN);
	return EVP_Digest(msg, sizeof(msg), out, NULL, EVP_sha256(),
	    NULL) == 1 ? 0 : -1;
}

/* 64 hex digits into 32 bytes; -1 if it is not that. */
static int
hex_decode(const char *hex, unsigned char *out)
{
	unsigned int	v;
	int		i;

	if (strlen(hex) != HEX_LEN)
		return -1;
	for (i = 0; i < HASH_LEN; i++) {
		if (sscanf(hex + 2 * i, "%2x", &v) != 1)
			return -1;
		out[i] = (unsigned char)v;
	}
	return 0;
}

/* Records the first break: at the position the walk expected next. */
static void
walk_fail(struct walk *w, long long id, const char *fmt, ...)
{
	va_list	ap;

	w->bad_seq = w->seq + 1;
	w->bad_id = id;
	va_start(ap, fmt);
	vsnprintf(w->why, sizeof(w->why), fmt, ap);
	va_end(ap);
}

/* Checks chain row ci against event row ei (same id); -1 if broken. */
static int
walk_link(struct walk *w, const PGresult *ch, int ci, const PGresult *ev,
    int ei)
{
	unsigned char	 prev[HASH_LEN], hash[HASH_LEN], digest[HASH_LEN];
	unsigned char	 want[HASH_LEN];
	long long	 seq = strtoll(PQgetvalue(ch, ci, 0), NULL, 10);
	long long	 id = strtoll(PQgetvalue(ch, ci, 1), NULL, 10);

	if (seq != w->seq + 1) {
		walk_fail(w, id, "stored seq %lld: a row was removed or "
		    "reordered", seq);
		return -1;
	}
	if (hex_decode(PQgetvalue(ch, ci, 2), prev) == -1 ||
	    hex_decode(PQgetvalue(ch, ci, 3), hash) == -1 ||
	    memcmp(prev, w->prev, HASH_LEN) != 0) {
		walk_fail(w, id, "prev_hash is not the hash of seq %lld",
		    w->seq);
		return -1;
	}
	if (event_digest(ev, ei, digest) == -1 ||
	    link_hash(prev, seq, digest, want) == -1) {
		walk_fail(w, id, "cannot compute sha256");
		return -1;
	}
	if (memcmp(want, hash, HASH_LEN) != 0) {
		walk_fail(w, id, "the hash does not match the event: the row "
		    "was changed");
		return -1;
	}
	w->seq = seq;
	w->id = id;
	memcpy(w->prev, hash, HASH_LEN);
	return 0;
}

/* Walks a chunk of chain rows and the events of their id range. */
static int
walk_merge(struct walk *w, const PGresult *ch, const PGresult *ev)
{
	int		ci = 0, ei = 0, nc = PQntuples(ch), ne = PQntuples(ev);
	long long	cid, eid;

	while (ci < nc || ei < ne) {
		cid = ci < nc ? strtoll(PQgetvalue(ch, ci, 1), NULL, 10) :
		    LLONG_MAX;
		eid = ei < ne ? strtoll(PQgetvalue(ev, ei, 0), NULL, 10) :
		    LLONG_MAX;
		if (eid < cid) {
			walk_fail(w, eid, "an unsealed event inside the "
			    "sealed chain: inserted behind the head");
			return -1;
		}
		if (cid < eid) {
			walk_fail(w, cid, "the sealed event is missing: "
			    "deleted");
			return -1;
		}
		if (walk_link(w, ch, ci++, ev, ei++) == -1)
			return -1;
	}
	return 0;
}

/* One chunk; *more = 0 at the end of the chain.  0, -1 broken, or exit. */
static int
walk_chunk(struct ctl *ctl, struct walk *w, int *more)
{
	char		 after[24], upto[24];
	const char	*cp[2] = { after, CHUNK_ROWS };
	const char	*ep[2] = { after, upto };
	PGresult	*ch, *ev;
	int		 r;

	snprintf(after, sizeof(after), "%lld", w->id);
	if ((r = ctl_call(ctl, DB_AUDIT_CHAIN_CHUNK, cp, &ch)) != 0)
		return r;
	if ((*more = PQntuples(ch) > 0) == 0) {
		PQclear(ch);
		return 0;
	}
	snprintf(upto, sizeof(upto), "%s", PQgetvalue(ch, PQntuples(ch) - 1,
	    1));
	if ((r = ctl_call(ctl, DB_AUDIT_EVENT_CHUNK, ep, &ev)) != 0) {
		PQclear(ch);
		return r;
	}
	r = walk_merge(w, ch, ev);
	PQclear(ch);
	PQclear(ev);
	return r;
}

/* Walks the whole chain in id order; 0, -1 broken, or an exit code. */
static int
walk_chain(struct ctl *ctl, struct walk *w)
{
	int	more = 1, r = 0;

	while (more && (r = walk_chunk(ctl, w, &more)) == 0)
		;
	return r;
}

/* Reads an anchor file; 0, or -1 with a message on stderr. */
static int
anchor_read(const char *path, struct anchor *a)
{
	FILE	*fp;
	char	 magic[64];
	int	 n;

	if ((fp = fopen(path, "r")) == NULL) {
		fprintf(stderr, "eavctl: %s: %s\n", path, strerror(errno));
		return -1;
	}
	n = fscanf(fp, "%63[^\n] seq %lld id %lld hash %64s", magic, &a->seq,
	    &a->id, a->hash);
	fclose(fp);
	if (n != 4 || strcmp(magic, ANCHOR_MAGIC) != 0 || a->seq < 0) {
		fprintf(stderr, "eavctl: %s is not an audit anchor\n", path);
		return -1;
	}
	return 0;
}

/*
 * The anchored head must still be in the chain with the same hash: a cut
 * tail lacks it, a rewritten chain has another hash there.
 */
static int
anchor_check(struct ctl *ctl, struct walk *w, const struct anchor *a,
    const char *path)
{
	char		 seq[24];
	const char	*p[1] = { seq };
	PGresult	*res;
	int		 r, ok;

	if (a->seq == 0)
		return 0;
	snprintf(seq, sizeof(seq), "%lld", a->seq);
	if ((r = ctl_call(ctl, DB_AUDIT_AT_SEQ, p, &res)) != 0)
		return r;
	if (PQntuples(res) == 0) {
		walk_fail(w, 0, "the tail was removed (anchor seq %lld)",
		    a->seq);
		printf("audit chain broken at seq %lld: the chain ends at seq "
		    "%lld but %s anchors seq %lld (id %lld): the tail was "
		    "removed\n", w->seq + 1, w->seq, path, a->seq, a->id);
		PQclear(res);
		return -1;
	}
	ok = strtoll(PQgetvalue(res, 0, 0), NULL, 10) == a->id &&
	    strcmp(PQgetvalue(res, 0, 1), a->hash) == 0;
	if (!ok) {
		w->seq = a->seq - 1;
		walk_fail(w, a->id, "rewritten (anchor hash differs)");
		printf("audit chain broken at seq %lld (id %lld): not the "
		    "hash %s anchors: the chain was rewritten at or before "
		    "it\n", a->seq, a->id, path);
	} else
		printf("anchor %s: seq %lld matches\n", path, a->seq);
	PQclear(res);
	return ok ? 0 : -1;
}

/* The unsealed tail, after a good walk. */
static int
verify_report(struct ctl *ctl, const struct walk *w)
{
	char		 after[24];
	const char	*p[1] = { after };
	PGresult	*res;
	int		 r;

	snprintf(after, sizeof(after), "%lld", w->id);
	if ((r = ctl_call(ctl, DB_AUDIT_TAIL, p, &res)) != 0)
		return r;
	printf("audit chain ok: seq 1..%lld verified; %s event(s) not yet "
	    "sealed (oldest %s ms)\n", w->seq, PQgetvalue(res, 0, 0),
	    PQgetvalue(res, 0, 1));
	PQclear(res);
	return 0;
}

/* A broken chain is a critical alarm (FM-050), once per subject. */
static void
verify_alarm(struct ctl *ctl, const struct walk *w)
{
	char		 msg[400];
	const char	*p[6] = { "audit_chain_broken", "critical", "audit",
	    msg, "{}", ctl->actor };
	PGresult	*res;

	snprintf(msg, sizeof(msg), "eavctl audit verify: broken at seq %lld "
	    "(id %lld)%s%s", w->bad_seq, w->bad_id, w->why[0] ? ": " : "",
	    w->why);
	if (db_exec(&ctl->db, "ROLLBACK") != DB_OK ||
	    db_call(&ctl->db, DB_ALARM_RAISE, p, &res) != DB_OK) {
		fprintf(stderr, "eavctl: cannot raise the alarm: %s\n",
		    ctl->db.errmsg);
		return;
	}
	PQclear(res);
}

/* Opens the walk's transaction: one snapshot for the whole chain. */
static int
verify_begin(struct ctl *ctl)
{
	int	r;

	if ((r = ctl_connect(ctl)) != 0)
		return r;
	/* UTF8, so that lengths are the server's (its encoding). */
	if (PQsetClientEncoding(ctl->db.conn, "UTF8") != 0) {
		fprintf(stderr, "eavctl: cannot set client_encoding: %s",
		    PQerrorMessage(ctl->db.conn));
		return EAV_EXIT_FATAL;
	}
	if (db_exec(&ctl->db, "BEGIN ISOLATION LEVEL REPEATABLE READ "
	    "READ ONLY") != DB_OK)
		return ctl_fail(ctl, DB_FATAL);
	return 0;
}

/* Walks the whole chain in one snapshot: 0, -1 broken, or an exit code. */
static int
verify_walk(struct ctl *ctl, struct walk *w)
{
	int	r;

	memset(w, 0, sizeof(*w));
	if ((r = verify_begin(ctl)) != 0)
		return r;
	return walk_chain(ctl, w);
}

/*
 * The chain's verdict for other commands (eavctl diagnose --verify): as
 * audit verify without an anchor, printing nothing, but a broken chain
 * raises the same alarm.  Ends the walk's transaction.
 */
int
audit_chain_verify(struct ctl *ctl, struct audit_verdict *v)
{
	struct walk	w;
	int		r = verify_walk(ctl, &w);

	v->seq = w.seq;
	v->id = w.id;
	v->bad_seq = w.bad_seq;
	v->bad_id = w.bad_id;
	snprintf(v->why, sizeof(v->why), "%s", w.why);
	if (r == -1)
		verify_alarm(ctl, &w);
	else if (r == 0 && db_exec(&ctl->db, "ROLLBACK") != DB_OK)
		return ctl_fail(ctl, DB_FATAL);
	return r;
}

/*
 * eavctl audit verify [--anchor FILE]: exit 0 when the chain holds (and
 * the anchor is in it), 3 when it is broken, naming the first bad row.
 */
static int
audit_verify(struct ctl *ctl, int argc, char **argv)
{
	struct walk	 w;
	struct anchor	 a;
	const char	*anchor = NULL;
	int		 r;

	if (argc == 3 && strcmp(argv[1], "--anchor") == 0)
		anchor = argv[2];
	else if (argc != 1)
		return ctl_usage("audit");
	if (anchor != NULL && anchor_read(anchor, &a) == -1)
		return EAV_EXIT_USAGE;
	if ((r = verify_walk(ctl, &w)) == -1)
		printf("audit chain broken at seq %lld (id %lld): %s\n",
		    w.bad_seq, w.bad_id, w.why);
	else if (r == 0 && anchor != NULL)
		r = anchor_check(ctl, &w, &a, anchor);
	if (r > 0)
		return r;
	if (r == -1) {
		verify_alarm(ctl, &w);
		return EAV_EXIT_VIOLATION;
	}
	return verify_report(ctl, &w) == 0 ? 0 : EAV_EXIT_FATAL;
}

/* Writes text to path atomically: a temporary file, fsync, rename. */
static int
anchor_write(const char *path, const char *text)
{
	char	 tmp[4096], dir[4096];
	size_t	 len = strlen(text);
	int	 fd, ok;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid()) >=
	    (int)sizeof(tmp) || snprintf(dir, sizeof(dir), "%s", path) >=
	    (int)sizeof(dir)) {
		fprintf(stderr, "eavctl: %s: path too long\n", path);
		return -1;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd == -1) {
		fprintf(stderr, "eavctl: %s: %s\n", tmp, strerror(errno));
		return -1;
	}
	ok = write(fd, text, len) == (ssize_t)len && fsync(fd) == 0;
	ok = close(fd) == 0 && ok && rename(tmp, path) == 0;
	if (!ok) {
		fprintf(stderr, "eavctl: %s: %s\n", path, strerror(errno));
		(void)unlink(tmp);
		return -1;
	}
	/* The rename is durable once the directory is. */
	if ((fd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC)) ==
	    -1 || fsync(fd) == -1) {
		fprintf(stderr, "eavctl: %s: %s\n", dir, strerror(errno));
		if (fd != -1)
			(void)close(fd);
		return -1;
	}
	return close(fd) == 0 ? 0 : -1;
}

/* eavctl audit anchor FILE: the chain's head, written outside the db. */
static int
audit_anchor(struct ctl *ctl, int argc, char **argv)
{
	PGresult	*res;
	char		 text[512];
	int		 r;

	if (argc != 2)
		return ctl_usage("audit");
	if ((r = ctl_call(ctl, DB_AUDIT_HEAD, NULL, &res)) != 0)
		return r;
	snprintf(text, sizeof(text), "%s\nseq %s\nid %s\nhash %s\n"
	    "sealed_at %s\n", ANCHOR_MAGIC, PQgetvalue(res, 0, 0),
	    PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2),
	    PQgetvalue(res, 0, 3));
	PQclear(res);
	if (anchor_write(argv[1], text) == -1)
		return EAV_EXIT_FATAL;
	fputs(text, stdout);
	return 0;
}

/* eavctl audit verify [--anchor FILE] | eavctl audit anchor FILE */
int
cmd_audit(struct ctl *ctl, int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "verify") == 0)
		return audit_verify(ctl, argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "anchor") == 0)
		return audit_anchor(ctl, argc - 1, argv + 1);
	return ctl_usage("audit");
}
