/*
 * TLS clients for the http tool and https watcher probes: one client
 * SSL_CTX per process (a worker, the producer), made on the first
 * https connection and freed at exit, and one SSL per connection, inside the
 * bufferevent that evhttp uses for it.
 *
 * The far side is always verified, and nothing in a tool's config turns
 * that off: its chain against the system's CA certificates, or, when the
 * config names a ca_file, against that PEM bundle alone (a private CA
 * should not also trust every public one); its certificate against the
 * URL's host, a DNS name (also sent as SNI) or an IP address.
 *
 * The verify callback writes the first verification failure into a slot
 * the call owns (SSL ex_data), because evhttp resets a failed connection,
 * and SSL_clear with it, before it tells the call: SSL_get_verify_result
 * is gone by then.
 *
 * A ca_file's store is kept per path and loaded again once the file
 * changes (device, inode, size or mtime), so a rotated bundle applies
 * from the next call on, without a restart.
 */
#include <sys/types.h>
#include <sys/stat.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "tls.h"
#include "xalloc.h"

#define TLS_NAME_MAX	255	/* the longest SNI host name */

/* A ca_file's certificates, and the file they were read from. */
struct tls_store {
	struct tls_store	*next;
	char			*path;
	struct stat		 st;
	X509_STORE		*store;
};

static SSL_CTX		*tls_ctx;
static int		 tls_slot = -1;	/* ex_data: the call's int slot */
static struct tls_store	*tls_stores;

static const char *tls_reason(unsigned long);
static const char *tls_error(void);
static int	tls_verify_cb(int, X509_STORE_CTX *);
static SSL_CTX	*tls_context(void);
static int	tls_same_file(const struct stat *, const struct stat *);
static X509_STORE *tls_store_load(const char *, char *, size_t);
static X509_STORE *tls_store_get(const char *, char *, size_t);
static int	tls_set_peer(SSL *, const char *);

/* The text of an OpenSSL error code, in a static buffer. */
static const char *
tls_reason(unsigned long e)
{
	static char	 buf[256];
	const char	*r = ERR_reason_error_string(e);

	if (r != NULL)
		return r;
	ERR_error_string_n(e, buf, sizeof(buf));
	return buf;
}

/* OpenSSL's latest error, for a message; the queue is emptied. */
static const char *
tls_error(void)
{
	unsigned long	 e = ERR_peek_last_error();
	const char	*r = e != 0 ? tls_reason(e) : "no reason given";

	ERR_clear_error();
	return r;
}

/* Records the first verification failure in the call's slot. */
static int
tls_verify_cb(int ok, X509_STORE_CTX *x)
{
	SSL	*ssl;
	int	*slot;

	if (ok)
		return 1;
	ssl = X509_STORE_CTX_get_ex_data(x,
	    SSL_get_ex_data_X509_STORE_CTX_idx());
	if (ssl != NULL && (slot = SSL_get_ex_data(ssl, tls_slot)) != NULL &&
	    *slot == X509_V_OK)
		*slot = X509_STORE_CTX_get_error(x);
	return 0;
}

/* The worker's client context, made on the first https call. */
static SSL_CTX *
tls_context(void)
{
	if (tls_ctx != NULL)
		return tls_ctx;
	if ((tls_ctx = SSL_CTX_new(TLS_client_method())) == NULL ||
	    SSL_CTX_set_min_proto_version(tls_ctx, TLS1_2_VERSION) != 1)
		fatalx("cannot make a TLS context: %s", tls_error());
	/* Not fatal: calls with a ca_file need none of it. */
	if (SSL_CTX_set_default_verify_paths(tls_ctx) != 1)
		log_warnx("TLS: cannot load the system's CA certificates "
		    "(%s); https calls without ca_file will not verify",
		    tls_error());
	SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_PEER, tls_verify_cb);
	tls_slot = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	if (tls_slot == -1)
		fatalx("cannot make a TLS context: %s", tls_error());
	return tls_ctx;
}

/* Whether a and b describe the same version of one file. */
static int
tls_same_file(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino &&
	    a->st_size == b->st_size &&
	    a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
	    a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* A new store of the CA certificates in path; NULL with err set. */
static X509_STORE *
tls_store_load(const char *path, char *err, size_t errlen)
{
	X509_STORE	*store;

	if ((store = X509_STORE_new()) == NULL)
		fatalx("X509_STORE_new failed: %s", tls_error());
	ERR_clear_error();
	if (X509_STORE_load_file(store, path) != 1) {
		snprintf(err, errlen, "the tool's ca_file %s holds no "
		    "certificate that can be read (%s)", path, tls_error());
		X509_STORE_free(store);
		return NULL;
	}
	return store;
}

/*
 * The store of path, loaded again if the file changed since; NULL with
 * err set.  The file is looked at before it is read, so a change during
 * the read shows at the next call.
 */
static X509_STORE *
tls_store_get(const char *path, char *err, size_t errlen)
{
	struct tls_store	*t;
	struct stat		 st;
	X509_STORE		*store;

	if (stat(path, &st) == -1) {
		snprintf(err, errlen, "the tool's ca_file %s cannot be read: "
		    "%s", path, strerror(errno));
		return NULL;
	}
	for (t = tls_stores; t != NULL; t = t->next)
		if (strcmp(t->path, path) == 0)
			break;
	if (t != NULL && tls_same_file(&t->st, &st))
		return t->store;
	if ((store = tls_store_load(path, err, errlen)) == NULL)
		return NULL;
	if (t == NULL) {
		t = xcalloc(1, sizeof(*t));
		t->path = xstrdup(path);
		t->next = tls_stores;
		tls_stores = t;
	} else
		X509_STORE_free(t->store);
	t->store = store;
	t->st = st;
	return store;
}

/*
 * What the far side's certificate must name: an IP address, or a DNS
 * name, which SNI carries too (RFC 6066 allows no address there).
 * 0, or -1.
 */
static int
tls_set_peer(SSL *ssl, const char *host)
{
	unsigned char	addr[sizeof(struct in6_addr)];
	char		name[TLS_NAME_MAX + 1];

	if (inet_pton(AF_INET, host, addr) == 1 ||
	    inet_pton(AF_INET6, host, addr) == 1)
		return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl),
		    host) == 1 ? 0 : -1;
	/* A copy: the SNI macro casts its argument's const away. */
	if (strlen(host) > TLS_NAME_MAX)
		return -1;
	memcpy(name, host, strlen(host) + 1);
	/* f*.example.com is not a name we mean to trust. */
	SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
	if (SSL_set_tlsext_host_name(ssl, name) != 1 ||
	    SSL_set1_host(ssl, name) != 1)
		return -1;
	return 0;
}

/*
 * A TLS bufferevent for one call to host (without brackets), not yet
 * connected; it owns its SSL.  The chain is verified against ca_file
 * (NULL: the system's CAs), and the first verification failure goes to
 * *verify_error, which must live as long as the bufferevent.  NULL with
 * err set if the ca_file or host cannot be used.
 */
struct bufferevent *
tls_bufferevent(struct event_base *base, const char *host,
    const char *ca_file, int *verify_error, char *err, size_t errlen)
{
	SSL_CTX			*ctx = tls_context();
	X509_STORE		*store = NULL;
	SSL			*ssl;
	struct bufferevent	*bev;

	if (ca_file != NULL && (store = tls_store_get(ca_file, err,
	    errlen)) == NULL)
		return NULL;
	if ((ssl = SSL_new(ctx)) == NULL)
		fatalx("SSL_new failed: %s", tls_error());
	*verify_error = X509_V_OK;
	if (SSL_set_ex_data(ssl, tls_slot, verify_error) != 1 ||
	    (store != NULL && SSL_set1_verify_cert_store(ssl, store) != 1))
		fatalx("cannot set up a TLS connection: %s", tls_error());
	if (tls_set_peer(ssl, host) == -1) {
		snprintf(err, errlen, "the host %.100s cannot be verified "
		    "by TLS (%s)", host, tls_error());
		SSL_free(ssl);
		return NULL;
	}
	bev = bufferevent_openssl_socket_new(base, -1, ssl,
	    BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL)
		fatalx("bufferevent_openssl_socket_new failed");
	return bev;
}

/* Why a certificate was refused (a verify_error from tls_bufferevent). */
const char *
tls_verify_reason(int verify_error)
{
	return X509_verify_cert_error_string(verify_error);
}

/*
 * The newest OpenSSL error a TLS bufferevent recorded (the reason a
 * handshake failed), or NULL if it recorded none: a plain I/O error.
 */
const char *
tls_bev_error(struct bufferevent *bev)
{
	unsigned long	e;

	/* libevent also files SSL_get_error() codes, which have no lib. */
	while ((e = bufferevent_get_openssl_error(bev)) != 0)
		if (ERR_GET_LIB(e) != 0)
			return tls_reason(e);
	return NULL;
}

/* Frees the context and the CA stores (at exit: valgrind is watching). */
void
tls_free(void)
{
	struct tls_store	*t;

	while ((t = tls_stores) != NULL) {
		tls_stores = t->next;
		X509_STORE_free(t->store);
		free(t->path);
		free(t);
	}
	SSL_CTX_free(tls_ctx);
	tls_ctx = NULL;
}
