/* Batched datagram I/O for the SIP UDP transport: recvmmsg and sendmmsg over one non-blocking
 * socket. Plain C with no Python; udpio.pyx turns the batches into bytes and address tuples.
 *
 * A receive batch owns UDPIO_BATCH buffers of UDPIO_MAX octets (the largest UDP payload), so a
 * datagram is never truncated. A send batch only points at the caller's buffers (the Python
 * bytes objects are kept alive by udpio.pyx until the batch has gone).
 */
#ifndef HPBX_UDPIO_CORE_H
#define HPBX_UDPIO_CORE_H

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <unistd.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define UDPIO_BATCH 64   /* datagrams per receive */
#define UDPIO_TX 256     /* datagrams per send batch */
#define UDPIO_MAX 65536

typedef struct {
    struct mmsghdr msgs[UDPIO_BATCH];
    struct iovec iov[UDPIO_BATCH];
    struct sockaddr_storage addrs[UDPIO_BATCH];
    char *bufs; /* UDPIO_BATCH * UDPIO_MAX */
} udpio_rx;

typedef struct {
    struct mmsghdr msgs[UDPIO_TX];
    struct iovec iov[UDPIO_TX];
    struct sockaddr_storage addrs[UDPIO_TX];
    int n;
} udpio_tx;

static udpio_rx *udpio_rx_new(void)
{
    udpio_rx *r = calloc(1, sizeof(udpio_rx));
    if (r == NULL)
        return NULL;
    r->bufs = malloc((size_t)UDPIO_BATCH * UDPIO_MAX);
    if (r->bufs == NULL) {
        free(r);
        return NULL;
    }
    return r;
}

static void udpio_rx_free(udpio_rx *r)
{
    if (r != NULL) {
        free(r->bufs);
        free(r);
    }
}

/* Up to UDPIO_BATCH datagrams: their count, 0 when none is waiting, -errno on an error. */
static int udpio_recv(int fd, udpio_rx *r)
{
    int i, n;
    for (i = 0; i < UDPIO_BATCH; i++) {
        r->iov[i].iov_base = r->bufs + (size_t)i * UDPIO_MAX;
        r->iov[i].iov_len = UDPIO_MAX;
        memset(&r->msgs[i].msg_hdr, 0, sizeof(struct msghdr));
        r->msgs[i].msg_hdr.msg_iov = &r->iov[i];
        r->msgs[i].msg_hdr.msg_iovlen = 1;
        r->msgs[i].msg_hdr.msg_name = &r->addrs[i];
        r->msgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
    }
    do {
        n = recvmmsg(fd, r->msgs, UDPIO_BATCH, MSG_DONTWAIT, NULL);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
    return n;
}

/* The text form and port of a received address; 0 on success. */
static int udpio_addr(const struct sockaddr_storage *sa, char *host, size_t hostlen, int *port,
                      unsigned int *flowinfo, unsigned int *scope_id)
{
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        if (inet_ntop(AF_INET, &a->sin_addr, host, (socklen_t)hostlen) == NULL)
            return -1;
        *port = ntohs(a->sin_port);
        *flowinfo = 0;
        *scope_id = 0;
        return 0;
    }
    if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        if (inet_ntop(AF_INET6, &a->sin6_addr, host, (socklen_t)hostlen) == NULL)
            return -1;
        *port = ntohs(a->sin6_port);
        *flowinfo = ntohl(a->sin6_flowinfo);
        *scope_id = a->sin6_scope_id;
        return 0;
    }
    return -1;
}

/* The socket address of a literal host for a socket of `family` (an IPv4 host on an IPv6
 * socket becomes a v4-mapped address): 0, or -1 when the host is no literal address. */
static int udpio_sockaddr(int family, const char *host, int port, unsigned int scope_id,
                          struct sockaddr_storage *sa, socklen_t *salen)
{
    memset(sa, 0, sizeof(*sa));
    if (family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)sa;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((unsigned short)port);
        a->sin6_scope_id = scope_id;
        if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1) {
            struct in_addr v4;
            if (inet_pton(AF_INET, host, &v4) != 1)
                return -1;
            a->sin6_addr.s6_addr[10] = 0xff;
            a->sin6_addr.s6_addr[11] = 0xff;
            memcpy(&a->sin6_addr.s6_addr[12], &v4, 4);
        }
        *salen = sizeof(struct sockaddr_in6);
        return 0;
    }
    {
        struct sockaddr_in *a = (struct sockaddr_in *)sa;
        a->sin_family = AF_INET;
        a->sin_port = htons((unsigned short)port);
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
            return -1;
        *salen = sizeof(struct sockaddr_in);
        return 0;
    }
}

/* Queue one datagram (the batch must have room). */
static void udpio_tx_add(udpio_tx *t, const char *data, size_t len,
                         const struct sockaddr_storage *sa, socklen_t salen)
{
    memcpy(&t->addrs[t->n], sa, salen);
    t->iov[t->n].iov_base = (void *)data;
    t->iov[t->n].iov_len = len;
    memset(&t->msgs[t->n].msg_hdr, 0, sizeof(struct msghdr));
    t->msgs[t->n].msg_hdr.msg_iov = &t->iov[t->n];
    t->msgs[t->n].msg_hdr.msg_iovlen = 1;
    t->msgs[t->n].msg_hdr.msg_name = &t->addrs[t->n];
    t->msgs[t->n].msg_hdr.msg_namelen = salen;
    t->n++;
}

static inline const char *udpio_rx_buf(udpio_rx *r, int i, size_t *len)
{
    *len = r->msgs[i].msg_len;
    return (const char *)r->iov[i].iov_base;
}

static inline const struct sockaddr_storage *udpio_rx_sa(udpio_rx *r, int i)
{
    return &r->addrs[i];
}

static inline socklen_t udpio_rx_salen(udpio_rx *r, int i)
{
    return r->msgs[i].msg_hdr.msg_namelen;
}

/* Send queued datagrams from index `first`: how many went (>= 0), or -errno when the first
 * of them failed. */
static int udpio_send(int fd, udpio_tx *t, int first)
{
    int n;
    if (first >= t->n)
        return 0;
    do {
        n = sendmmsg(fd, &t->msgs[first], (unsigned int)(t->n - first), MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

/* ---- the sender thread
 * The kernel's work for a datagram sent on loopback (and most of it on a NIC) is done in the
 * sender's system call: a third of a busy registrar's CPU. A native thread makes those calls,
 * so the Python thread only fills batches. One batch is handed over at a time; while the
 * thread sends it, Python fills the next. When a batch is done and Python asked to be told
 * (it had more waiting), the thread writes to `notify_fd` (an eventfd on Python's loop). */
typedef struct {
    int fd;
    int notify_fd;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    udpio_tx *job;        /* the batch being sent, NULL when the thread is idle */
    int stop;
    int want_notify;
    unsigned long errors; /* datagrams the kernel refused */
} udpio_sender;

static void udpio_send_all(int fd, udpio_tx *t, unsigned long *errors)
{
    int first = 0, n;
    while (first < t->n) {
        n = sendmmsg(fd, &t->msgs[first], (unsigned int)(t->n - first), MSG_DONTWAIT);
        if (n > 0) {
            first += n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == ENOBUFS)) {
            /* the socket buffer is full: wait until it drains (this thread only) */
            struct pollfd p = {fd, POLLOUT, 0};
            poll(&p, 1, 100);
            continue;
        }
        /* this datagram cannot go (no route, refused address): drop it, go on */
        (*errors)++;
        first++;
    }
}

static void *udpio_sender_main(void *arg)
{
    udpio_sender *s = (udpio_sender *)arg;
    sigset_t all;
    struct sched_param none = {0};
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are Python's */
    /* SCHED_BATCH: waking this thread for a batch must not preempt the event loop that woke
     * it (a freshly woken thread otherwise takes the waker's CPU at once); it runs on the
     * other core, or when the loop waits */
    pthread_setschedparam(pthread_self(), SCHED_BATCH, &none);
    for (;;) {
        udpio_tx *t;
        int notify;
        pthread_mutex_lock(&s->mu);
        while (!s->stop && s->job == NULL)
            pthread_cond_wait(&s->cv, &s->mu);
        t = s->job;
        pthread_mutex_unlock(&s->mu);
        if (t == NULL)
            break; /* stop, nothing left */
        udpio_send_all(s->fd, t, &s->errors);
        pthread_mutex_lock(&s->mu);
        s->job = NULL;
        notify = s->want_notify;
        s->want_notify = 0;
        pthread_mutex_unlock(&s->mu);
        if (notify) {
            uint64_t one = 1;
            ssize_t w = write(s->notify_fd, &one, sizeof(one));
            (void)w;
        }
    }
    return NULL;
}

static int udpio_sender_start(udpio_sender *s, int fd, int notify_fd)
{
    memset(s, 0, sizeof(*s));
    s->fd = fd;
    s->notify_fd = notify_fd;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    return pthread_create(&s->thread, NULL, udpio_sender_main, s);
}

/* Hand `t` over when the thread is idle: 1 if taken, 0 if busy (then it notifies when done). */
static int udpio_sender_offer(udpio_sender *s, udpio_tx *t)
{
    int taken = 0;
    pthread_mutex_lock(&s->mu);
    if (s->job == NULL && !s->stop) {
        s->job = t;
        taken = 1;
        pthread_cond_signal(&s->cv);
    } else {
        s->want_notify = 1;
    }
    pthread_mutex_unlock(&s->mu);
    return taken;
}

/* Stop after the batch in hand (it is sent), and join. */
static void udpio_sender_stop(udpio_sender *s)
{
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
}

#endif
