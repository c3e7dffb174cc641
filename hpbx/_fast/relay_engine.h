/*
 * relay_engine.h: the C core of hpbx._fast.relay (hand-written; included by relay.pyx).
 *
 * Worker threads own the packets: each runs an io_uring loop over the sockets of its sessions
 * (relay_uring.h: multishot receives, sends batched into the next wait) or, where io_uring is
 * unavailable, an epoll set with recvmmsg/sendmmsg, keeping per-stream counters in plain
 * structs. Both loops share rl_route (latching, statistics, where a datagram goes). Python
 * only issues commands (allocate, set peer, relatch, hold, delete, stats) through the rl_*
 * functions below, which take the owning worker's mutex. A worker holds its mutex while it
 * handles one epoll batch, so a command waits at most one batch and never sees half an update.
 *
 * No Python object is touched here: the threads run without the GIL and nothing can unwind
 * into them.
 */
#ifndef HPBX_RELAY_ENGINE_H
#define HPBX_RELAY_ENGINE_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define RL_BATCH 32          /* datagrams per recvmmsg/sendmmsg */
#define RL_MAXPKT 2048       /* larger datagrams are dropped (truncated on receive) */
#define RL_EVENTS 512        /* epoll events per wait */
#define RL_ROUNDS 4          /* recvmmsg rounds per ready socket before serving the others */
#define RL_WAKE UINT64_MAX   /* epoll tag of the worker's stop eventfd */

#include "media_rtp.h"

#define RL_SEQ_MOD (1u << 16)
#define RL_MAX_DROPOUT 3000
#define RL_MAX_MISORDER 100

typedef union {
	struct sockaddr sa;
	struct sockaddr_in v4;
	struct sockaddr_in6 v6;
} rl_sa;

/* One direction of media: what arrived on a leg from its peer (and was relayed to the other). */
typedef struct {
	uint64_t packets, bytes;           /* RTP relayed */
	uint64_t rtcp_packets, rtcp_bytes; /* RTCP relayed */
	uint64_t dropped_source;           /* from a source latching did not accept */
	uint64_t dropped_nopeer;           /* the other leg had no address to send to yet */
	uint64_t dropped_bad;              /* oversize or empty datagrams */
	uint64_t send_errors;
	uint64_t relatched;                /* times the source changed */
	/* RFC 3550 A.1 sequence state */
	int have_seq;
	uint32_t ssrc;
	uint16_t max_seq;
	uint32_t cycles, base_seq, bad_seq, received;
	int64_t expected_before;           /* earlier SSRCs (or sequence restarts) of this stream */
	int64_t lost_before;
	/* RFC 3550 A.8 interarrival jitter, in timestamp units times 16 */
	int have_transit;
	uint32_t transit;
	uint32_t jitter_q4;
	int64_t last_ns;                   /* CLOCK_MONOTONIC of the last RTP packet, 0 = none */
	int64_t last_rtcp_ns;
} rl_stream;

typedef struct {
	int fd[2];          /* [0] RTP socket (even port), [1] RTCP socket (RTP + 1) */
	int pair;           /* index in the port pool */
	uint16_t port;      /* RTP port */
	rl_sa sdp[2];       /* RTP/RTCP address from SDP; family 0 = not known */
	rl_sa peer[2];      /* where RTP/RTCP leaving through this leg go */
	int latched[2];     /* peer[k] was learnt from a received packet */
	int64_t seen_ns[2]; /* last packet from the latched source */
	rl_sa was[2];       /* the party before rl_switch (a transfer): relayed, never latched */
	int64_t was_until;  /* ... until the new party's first packet or this time */
	int rtcp_mux;       /* RTCP shares the RTP socket and address */
	int udptl;          /* the leg carries T.38 UDPTL (image/t38), not RTP: no RTCP demux,
			       no RTP statistics or header rewriting */
	uint32_t clock_rate;
	rl_stream st;
	me_txid tx;         /* outgoing RTP identity (media_rtp.h) */
	struct me_ep *ep;   /* non-NULL: the leg ends at a media endpoint (media_engine.h) */
	struct me_ep *dw;   /* non-NULL: digits are watched while the leg relays (me_watch) */
} rl_leg;

typedef struct {
	uint32_t gen;       /* bumped on delete: stale handles and stale epoll events miss */
	int in_use;
	int hold;
	int worker;
	uint8_t armed;      /* io_uring: sockets (bit leg*2+k) with a multishot receive in the kernel */
	int64_t created_ns;
	rl_leg leg[2];
} rl_session;

struct rl_relay;
struct rl_scratch;

typedef struct {
	struct rl_relay *r;
	int idx;
	int epfd;
	int wakefd;
	pthread_t th;
	int running;
	atomic_int tid;
	atomic_int start_err;       /* errno of a failed setpriority, reported by rl_start */
	pthread_mutex_t mu;
	uint8_t (*bufs)[RL_MAXPKT];
	struct rl_scratch *scratch; /* allocated with the relay, so a thread cannot fail to start */
	struct epoll_event *evs;
	struct rl_uring *u;         /* the io_uring loop's state; NULL with epoll */
	struct me_worker *mw;       /* media clock and endpoints; NULL until media is used */
} rl_worker;

typedef struct rl_relay {
	rl_sa bind_addr;
	socklen_t bind_len;
	int dual;                  /* bind_addr is [::] dual-stack: IPv4 peers held v4-mapped */
	int port_min, npairs;
	int *pool;                 /* FIFO ring of free pair indices: freed ports are reused last */
	int pool_head, pool_len;
	int pending_pairs;         /* io_uring: pairs of deleted sessions whose worker has not
	                            * closed their sockets yet (given back by rl_give_back) */
	int nsess;
	rl_session *sess;
	int *free_slots, nfree_slots;
	unsigned next_worker;
	pthread_mutex_t mu;        /* pool and slot bookkeeping */
	rl_worker *w;
	int nworkers;
	atomic_int stop;
	int strict;
	int64_t silence_ns;
	int rcvbuf;
	int nice;                  /* worker nice value; 0 = inherit */
	int uring;                 /* the workers run the io_uring loop (else epoll) */
	struct me_state *media;    /* media engine (media_engine.h); NULL until first used */
} rl_relay;

/* A flat copy of one leg's state for Python. */
typedef struct {
	int port, rtcp_port, rtcp_mux, latched, udptl;
	char peer_host[INET6_ADDRSTRLEN];
	int peer_port;
	char sdp_host[INET6_ADDRSTRLEN];
	int sdp_port;
	uint32_t clock_rate, ssrc;
	uint64_t packets, bytes, rtcp_packets, rtcp_bytes;
	uint64_t dropped_source, dropped_nopeer, dropped_bad, send_errors, relatched;
	int64_t expected, lost;
	uint32_t jitter;     /* timestamp units (RFC 3550 A.8) */
	double jitter_ms;
	int64_t last_ns, last_rtcp_ns;
} rl_leg_info;

static inline int64_t rl_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline int rl_sa_eq(const rl_sa *a, const rl_sa *b)
{
	if (a->sa.sa_family != b->sa.sa_family)
		return 0;
	if (a->sa.sa_family == AF_INET)
		return a->v4.sin_port == b->v4.sin_port && a->v4.sin_addr.s_addr == b->v4.sin_addr.s_addr;
	if (a->sa.sa_family == AF_INET6)
		return a->v6.sin6_port == b->v6.sin6_port &&
		       memcmp(&a->v6.sin6_addr, &b->v6.sin6_addr, sizeof a->v6.sin6_addr) == 0;
	return 0;
}

static inline socklen_t rl_sa_len(const rl_sa *a)
{
	return a->sa.sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

static inline int rl_sa_port(const rl_sa *a)
{
	if (a->sa.sa_family == AF_INET)
		return ntohs(a->v4.sin_port);
	if (a->sa.sa_family == AF_INET6)
		return ntohs(a->v6.sin6_port);
	return 0;
}

static void rl_sa_host(const rl_sa *a, char *out)
{
	out[0] = 0;
	if (a->sa.sa_family == AF_INET)
		inet_ntop(AF_INET, &a->v4.sin_addr, out, INET6_ADDRSTRLEN);
	else if (a->sa.sa_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&a->v6.sin6_addr))
		inet_ntop(AF_INET, &a->v6.sin6_addr.s6_addr[12], out, INET6_ADDRSTRLEN);
	else if (a->sa.sa_family == AF_INET6)
		inet_ntop(AF_INET6, &a->v6.sin6_addr, out, INET6_ADDRSTRLEN);
}

/*
 * Parse a numeric address and check it is a unicast destination we may send to.
 * Returns 0, or a negative code: -1 not an address, -2 port, -3 unspecified, -4 multicast,
 * -5 broadcast, -6 family differs from the relay's. A dual-stack relay takes both families and
 * holds an IPv4 peer as a v4-mapped IPv6 address (what its sockets see as the source).
 */
static int rl_parse_peer(const rl_relay *r, const char *host, int port, rl_sa *out)
{
	memset(out, 0, sizeof *out);
	if (port < 1 || port > 65535)
		return -2;
	if (inet_pton(AF_INET, host, &out->v4.sin_addr) == 1) {
		out->v4.sin_family = AF_INET;
		out->v4.sin_port = htons((uint16_t)port);
		uint32_t a = ntohl(out->v4.sin_addr.s_addr);
		if (a == 0)
			return -3;
		if ((a >> 28) == 0xE)
			return -4;
		if (a == 0xFFFFFFFFu || (a >> 28) == 0xF)
			return -5; /* limited broadcast and the reserved 240/4 block */
	} else if (inet_pton(AF_INET6, host, &out->v6.sin6_addr) == 1) {
		out->v6.sin6_family = AF_INET6;
		out->v6.sin6_port = htons((uint16_t)port);
		static const struct in6_addr any = IN6ADDR_ANY_INIT;
		if (memcmp(&out->v6.sin6_addr, &any, sizeof any) == 0)
			return -3;
		if (out->v6.sin6_addr.s6_addr[0] == 0xFF)
			return -4;
	} else {
		return -1;
	}
	if (r->dual && out->sa.sa_family == AF_INET) {
		struct in_addr v4 = out->v4.sin_addr;
		memset(out, 0, sizeof *out);
		out->v6.sin6_family = AF_INET6;
		out->v6.sin6_port = htons((uint16_t)port);
		out->v6.sin6_addr.s6_addr[10] = 0xFF;
		out->v6.sin6_addr.s6_addr[11] = 0xFF;
		memcpy(&out->v6.sin6_addr.s6_addr[12], &v4, 4);
		return 0;
	}
	if (out->sa.sa_family != r->bind_addr.sa.sa_family)
		return -6;
	return 0;
}

/* A received source must look like a real unicast sender too (a spoofed port 0 is not). */
static inline int rl_src_ok(const rl_sa *s)
{
	if (s->sa.sa_family == AF_INET) {
		uint32_t a = ntohl(s->v4.sin_addr.s_addr);
		return s->v4.sin_port != 0 && a != 0 && (a >> 28) < 0xE;
	}
	if (s->sa.sa_family == AF_INET6)
		return s->v6.sin6_port != 0 && s->v6.sin6_addr.s6_addr[0] != 0xFF;
	return 0;
}

/* ------------------------------------------------------------------ statistics */

static void rl_seq_init(rl_stream *s, uint16_t seq)
{
	s->base_seq = seq;
	s->max_seq = seq;
	s->bad_seq = RL_SEQ_MOD + 1;
	s->cycles = 0;
	s->received = 0;
	s->have_seq = 1;
}

static inline int64_t rl_expected(const rl_stream *s)
{
	if (!s->have_seq)
		return 0;
	return (int64_t)s->cycles + s->max_seq - s->base_seq + 1;
}

/* RFC 3550 A.1 (without probation: a relay counts from the first packet) and A.8. */
static inline void rl_rtp_stats(rl_stream *s, const uint8_t *p, size_t len, int64_t now, int64_t base_ns,
				uint32_t clock_rate)
{
	if (len < 12 || (p[0] >> 6) != 2)
		return;
	uint16_t seq = (uint16_t)((p[2] << 8) | p[3]);
	uint32_t ts = ((uint32_t)p[4] << 24) | ((uint32_t)p[5] << 16) | ((uint32_t)p[6] << 8) | p[7];
	uint32_t ssrc = ((uint32_t)p[8] << 24) | ((uint32_t)p[9] << 16) | ((uint32_t)p[10] << 8) | p[11];
	if (!s->have_seq || ssrc != s->ssrc) {
		if (s->have_seq) {
			s->expected_before += rl_expected(s);
			s->lost_before += rl_expected(s) - s->received;
		}
		s->ssrc = ssrc;
		rl_seq_init(s, seq);
		s->have_transit = 0;
		s->jitter_q4 = 0;
		s->received = 1;
	} else {
		uint16_t udelta = (uint16_t)(seq - s->max_seq);
		if (udelta < RL_MAX_DROPOUT) {
			if (seq < s->max_seq)
				s->cycles += RL_SEQ_MOD;
			s->max_seq = seq;
		} else if (udelta <= RL_SEQ_MOD - RL_MAX_MISORDER) {
			if (seq == s->bad_seq) {
				/* two sequential packets after a jump: the sender restarted */
				s->expected_before += rl_expected(s);
				s->lost_before += rl_expected(s) - s->received;
				rl_seq_init(s, seq);
			} else {
				s->bad_seq = (seq + 1) & (RL_SEQ_MOD - 1);
				return;
			}
		}
		s->received++;
	}
	uint32_t arrival = (uint32_t)(((unsigned __int128)(uint64_t)(now - base_ns) * clock_rate) / 1000000000u);
	uint32_t transit = arrival - ts;
	if (s->have_transit) {
		int32_t d = (int32_t)(transit - s->transit);
		if (d < 0)
			d = -d;
		s->jitter_q4 += (uint32_t)d - ((s->jitter_q4 + 8) >> 4);
	}
	s->transit = transit;
	s->have_transit = 1;
}

/* ------------------------------------------------------------------ latching */

/*
 * Decide whether a packet from src, arriving on slot k (0 RTP, 1 RTCP) of leg l, is accepted.
 * Strict: only the SDP address. Otherwise latch on the first source; a different source is
 * accepted only after rl_relatch() or when the latched one has been silent for silence_ns.
 */
static inline int rl_accept(rl_relay *r, rl_leg *l, int k, const rl_sa *src, int64_t now)
{
	if (r->strict) {
		const rl_sa *want = &l->sdp[k];
		return want->sa.sa_family && rl_sa_eq(src, want);
	}
	if (l->latched[k]) {
		if (rl_sa_eq(src, &l->peer[k])) {
			l->seen_ns[k] = now;
			return 1;
		}
		if (now - l->seen_ns[k] <= r->silence_ns || !rl_src_ok(src))
			return 0;
		l->st.relatched++;
	} else if (!rl_src_ok(src)) {
		return 0;
	} else if (l->was[k].sa.sa_family && rl_sa_eq(src, &l->was[k]) && now < l->was_until) {
		/* the party before a switch, still talking until it reads its BYE: relayed, so the
		 * staying party hears no gap, but not latched: the new party's first packet latches
		 * (latching the old one would lock the new one out for silence_ns) */
		return 1;
	}
	l->was[k].sa.sa_family = 0;
	l->peer[k] = *src;
	l->latched[k] = 1;
	l->seen_ns[k] = now;
	if (l->rtcp_mux && k == 0)
		l->peer[1] = *src;
	return 1;
}

/*
 * One received datagram of leg li, slot k (0 RTP, 1 RTCP): latching, counters, statistics.
 * Returns 1 with the socket and address it leaves through, or 0 when it is dropped (len 0 =
 * empty or oversize). Shared by the epoll and the io_uring loops.
 */
static inline int rl_route(rl_relay *r, rl_session *s, int li, int k, const rl_sa *src, const uint8_t *p,
			   size_t len, int64_t now, int *out_fd, const rl_sa **out_to)
{
	rl_leg *l = &s->leg[li], *o = &s->leg[li ^ 1];
	if (len == 0) {
		l->st.dropped_bad++;
		return 0;
	}
	if (!rl_accept(r, l, k, src, now)) {
		l->st.dropped_source++;
		return 0;
	}
	/* RFC 5761: on a muxed port, RTCP packet types 192-223 = second byte 64-95 masked. A UDPTL
	 * leg has no RTCP: its second byte is the low byte of the UDPTL sequence number, so the
	 * test would drop 32 of every 256 T.38 packets. */
	int udptl = l->udptl || o->udptl;
	int rtcp = udptl ? k == 1 : k == 1 || (len >= 2 && (p[1] & 0x7f) >= 64 && (p[1] & 0x7f) <= 95);
	if (udptl && k == 1) {
		l->st.dropped_bad++; /* nothing belongs on the port above a UDPTL port */
		return 0;
	}
	if (l->ep || o->ep) {
		/* a media endpoint on either leg: nothing is relayed that way (media_engine.h) */
		if (!rtcp) {
			l->st.packets++;
			l->st.bytes += len;
			l->st.last_ns = now;
			if (!udptl)
				rl_rtp_stats(&l->st, p, len, now, s->created_ns, l->clock_rate);
			if (l->ep)
				me_rx(r, s, li, p, len, now);
		}
		return 0;
	}
	int dk = (rtcp && !o->rtcp_mux) ? 1 : 0;
	if (!o->peer[dk].sa.sa_family) {
		l->st.dropped_nopeer++;
		return 0;
	}
	if (rtcp) {
		l->st.rtcp_packets++;
		l->st.rtcp_bytes += len;
		l->st.last_rtcp_ns = now;
	} else {
		l->st.packets++;
		l->st.bytes += len;
		l->st.last_ns = now;
		if (!udptl) {
			rl_rtp_stats(&l->st, p, len, now, s->created_ns, l->clock_rate);
			if (l->dw) /* digits reported to Python, the packet relayed all the same */
				me_watch_rx(r, s, li, p, len, now);
			me_tx_relayed(&o->tx, (uint8_t *)p, len, now); /* the buffer is the worker's own */
		}
	}
	*out_fd = o->fd[dk];
	*out_to = &o->peer[dk];
	return 1;
}

/* ------------------------------------------------------------------ worker */

/*
 * Per-worker scratch. One epoll batch is handled in two phases: every ready socket is read
 * into the pending area first, then all datagrams are sent back to back. Sends in a tight run
 * find a receiving endpoint still awake from the first one, instead of waking it once per
 * datagram between reads (the receiver's wakeups are charged to the sending relay).
 */
#define RL_PEND 512 /* datagrams held between the read phase and the send phase */

typedef struct rl_scratch {
	struct mmsghdr in[RL_PEND], out[RL_PEND];
	struct iovec iov[RL_PEND];
	rl_sa src[RL_PEND];
	int out_fd[RL_PEND];
	rl_stream *out_st[RL_PEND]; /* whose send_errors a failed datagram counts in */
	int used;                   /* pending slots 0..used-1 hold received datagrams */
	int nout;                   /* out[0..nout-1] wait for the send phase */
} rl_scratch;

static void rl_scratch_init(rl_scratch *x, uint8_t (*bufs)[RL_MAXPKT])
{
	memset(x, 0, sizeof *x);
	for (int i = 0; i < RL_PEND; i++) {
		x->iov[i].iov_base = bufs[i];
		x->iov[i].iov_len = RL_MAXPKT;
		x->in[i].msg_hdr.msg_iov = &x->iov[i];
		x->in[i].msg_hdr.msg_iovlen = 1;
		x->in[i].msg_hdr.msg_name = &x->src[i];
		x->in[i].msg_hdr.msg_namelen = sizeof x->src[i];
	}
}

/* The send phase: runs of datagrams leaving the same socket go out in one sendmmsg. */
static void rl_flush(rl_scratch *x)
{
	struct mmsghdr *out = x->out;
	const int *fds = x->out_fd;
	int n = x->nout, i = 0;
	while (i < n) {
		int j = i + 1;
		while (j < n && fds[j] == fds[i])
			j++;
		int off = i;
		while (off < j) {
			int s;
			if (j - off == 1) {
				/* the common case at 50 packets/s per stream: one datagram per socket per
				 * wakeup; sendto skips sendmmsg's msghdr copies */
				const struct msghdr *h = &out[off].msg_hdr;
				s = sendto(fds[i], h->msg_iov->iov_base, h->msg_iov->iov_len, MSG_DONTWAIT,
					   h->msg_name, h->msg_namelen) < 0 ? -1 : 1;
			} else {
				s = sendmmsg(fds[i], out + off, (unsigned)(j - off), MSG_DONTWAIT);
			}
			if (s <= 0) {
				if (s < 0 && errno == EINTR)
					continue;
				/* ECONNREFUSED and friends: the peer is gone for now; drop this datagram */
				x->out_st[off]->send_errors++;
				off++;
				continue;
			}
			off += s;
		}
		i = j;
	}
	/* give the used receive slots their full lengths back */
	for (int k = 0; k < x->used; k++) {
		x->iov[k].iov_len = RL_MAXPKT;
		x->in[k].msg_hdr.msg_namelen = sizeof x->src[k];
	}
	x->used = 0;
	x->nout = 0;
}

/*
 * The read phase for one ready socket. Sockets are edge-triggered: a level-triggered item is
 * polled again on the next epoll_wait only to be found empty, which the profile showed as a
 * per-packet cost. So a socket is read until a short batch (the queue was empty; a later
 * datagram raises a new edge), or re-armed when the fairness cap of RL_ROUNDS full batches
 * stops the reading early.
 */
static void rl_handle(rl_relay *r, rl_worker *w, rl_scratch *x, rl_session *s, int li, int k, uint64_t tag)
{
	rl_leg *l = &s->leg[li];
	int fd = l->fd[k];
	(void)w;
	for (int round = 0; round < RL_ROUNDS; round++) {
		if (x->used + RL_BATCH > RL_PEND)
			rl_flush(x);
		int base = x->used;
		int n = recvmmsg(fd, x->in + base, RL_BATCH, MSG_DONTWAIT, NULL);
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
			continue; /* EINTR or a queued socket error: the data behind it is still there */
		if (n <= 0)
			return;
		x->used += n;
		/* arrival time per read, not per epoll batch: jitter needs it (vDSO, ~50 ns) */
		int64_t now = rl_now();
		for (int i = base; i < base + n; i++) {
			size_t len = x->in[i].msg_len;
			const rl_sa *to;
			int ofd;
			if (x->in[i].msg_hdr.msg_flags & MSG_TRUNC)
				len = 0; /* oversize: counted as bad */
			if (!rl_route(r, s, li, k, &x->src[i], x->iov[i].iov_base, len, now, &ofd, &to))
				continue;
			/* the peer is referenced, not copied: the session cannot go away before the send
			 * phase (the worker holds its mutex), and a newer latch is the better target */
			struct msghdr *h = &x->out[x->nout].msg_hdr;
			x->iov[i].iov_len = len;
			h->msg_iov = &x->iov[i];
			h->msg_iovlen = 1;
			h->msg_name = (void *)to;
			h->msg_namelen = rl_sa_len(to);
			h->msg_control = NULL;
			h->msg_controllen = 0;
			h->msg_flags = 0;
			x->out_fd[x->nout] = ofd;
			x->out_st[x->nout] = &l->st;
			x->nout++;
		}
		if (n < RL_BATCH)
			return;
	}
	struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u64 = tag};
	epoll_ctl(w->epfd, EPOLL_CTL_MOD, fd, &ev);
}

static void rl_close_leg(rl_leg *l);
static void me_tick(rl_relay *r, rl_worker *w);
static void rl_give_back(rl_relay *r, const int pairs[2], int slot, int pending);
#include "relay_uring.h"

static void rl_epoll_loop(rl_relay *r, rl_worker *w)
{
	rl_scratch *x = w->scratch;
	struct epoll_event *evs = w->evs;
	rl_scratch_init(x, w->bufs);
	while (!atomic_load_explicit(&r->stop, memory_order_relaxed)) {
		int n = epoll_wait(w->epfd, evs, RL_EVENTS, 1000);
		if (n <= 0)
			continue;
		pthread_mutex_lock(&w->mu);
		if (atomic_load(&r->stop)) {
			/* close is under way: no more packets, nothing after the join may be touched */
			pthread_mutex_unlock(&w->mu);
			break;
		}
		for (int e = 0; e < n; e++) {
			uint64_t tag = evs[e].data.u64;
			if (tag == RL_WAKE)
				continue;
			if (tag == RL_TICK) {
				me_tick(r, w);
				continue;
			}
			uint32_t gen = (uint32_t)(tag >> 32);
			uint32_t slot = (uint32_t)tag >> 2;
			rl_session *s = &r->sess[slot];
			if (!s->in_use || s->gen != gen)
				continue; /* deleted after this event was queued */
			rl_handle(r, w, x, s, (tag >> 1) & 1, tag & 1, tag);
		}
		rl_flush(x);
		pthread_mutex_unlock(&w->mu);
	}
}

static void *rl_worker_main(void *arg)
{
	rl_worker *w = arg;
	rl_relay *r = w->r;
	int tid = (int)syscall(SYS_gettid);
	/* a relay that wakes late waits for whatever runs on its CPU: under load the worker
	 * should preempt bulk work, as media relays are usually configured to */
	if (r->nice && setpriority(PRIO_PROCESS, (id_t)tid, r->nice) < 0)
		atomic_store(&w->start_err, errno ? errno : EPERM);
	/* a ring is single-issuer: enabling it here makes this thread its submitter */
	if (r->uring && rlu_register(w->u->fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0) < 0)
		atomic_store(&w->start_err, errno ? errno : EINVAL);
	atomic_store(&w->tid, tid);
	if (atomic_load(&w->start_err))
		return NULL; /* rl_start reports it and stops the relay */
	if (r->uring)
		rlu_loop(r, w);
	else
		rl_epoll_loop(r, w);
	return NULL;
}

/* ------------------------------------------------------------------ lifecycle */

static void rl_free(rl_relay *r);

/* Returns NULL with errno set on failure. */
/* io_mode: 0 = io_uring where the kernel allows it, else epoll; 1 = epoll; 2 = io_uring or fail */
/* address6 (NULL or "" = none) beside an IPv4 address: dual-stack sockets bound to [::] */
static rl_relay *rl_new(const char *address, int port_min, int port_max, int nworkers, int strict,
			int64_t silence_ns, int io_mode, const char *address6)
{
	rl_relay *r = calloc(1, sizeof *r);
	if (!r)
		return NULL;
	if (address6 && address6[0]) {
		struct in_addr a4;
		struct in6_addr a6;
		if (inet_pton(AF_INET, address, &a4) != 1 || inet_pton(AF_INET6, address6, &a6) != 1) {
			free(r);
			errno = EINVAL;
			return NULL;
		}
		r->dual = 1;
		r->bind_addr.v6.sin6_family = AF_INET6;
		r->bind_addr.v6.sin6_addr = in6addr_any;
	} else if (inet_pton(AF_INET, address, &r->bind_addr.v4.sin_addr) == 1) {
		r->bind_addr.v4.sin_family = AF_INET;
	} else if (inet_pton(AF_INET6, address, &r->bind_addr.v6.sin6_addr) == 1) {
		r->bind_addr.v6.sin6_family = AF_INET6;
	} else {
		free(r);
		errno = EINVAL;
		return NULL;
	}
	r->bind_len = rl_sa_len(&r->bind_addr);
	int first = port_min + (port_min & 1);
	r->port_min = first;
	r->npairs = port_max >= first + 1 ? (port_max - first + 1) / 2 : 0;
	r->nsess = r->npairs / 2;
	r->strict = strict;
	r->silence_ns = silence_ns;
	r->nworkers = nworkers;
	pthread_mutex_init(&r->mu, NULL);
	r->pool = calloc(r->npairs ? r->npairs : 1, sizeof(int));
	r->sess = calloc(r->nsess ? r->nsess : 1, sizeof(rl_session));
	r->free_slots = calloc(r->nsess ? r->nsess : 1, sizeof(int));
	r->w = calloc(nworkers, sizeof(rl_worker));
	if (!r->pool || !r->sess || !r->free_slots || !r->w) {
		rl_free(r);
		errno = ENOMEM;
		return NULL;
	}
	for (int i = 0; i < r->npairs; i++)
		r->pool[i] = i;
	r->pool_len = r->npairs;
	for (int i = 0; i < r->nsess; i++)
		r->free_slots[i] = r->nsess - 1 - i; /* pop from the end: slot 0 first */
	r->nfree_slots = r->nsess;
	for (int i = 0; i < nworkers; i++) {
		rl_worker *w = &r->w[i];
		w->r = r;
		w->idx = i;
		w->epfd = -1;
		w->wakefd = -1;
		pthread_mutex_init(&w->mu, NULL);
	}
	r->uring = io_mode != 1;
	for (int i = 0; i < nworkers && r->uring; i++) {
		r->w[i].u = rlu_new(r->nsess);
		if (!r->w[i].u) {
			int e = errno;
			for (int j = 0; j < i; j++) {
				rlu_free(r->w[j].u);
				r->w[j].u = NULL;
			}
			r->uring = 0;
			if (io_mode == 2) {
				rl_free(r);
				errno = e;
				return NULL;
			}
		}
	}
	for (int i = 0; i < nworkers; i++) {
		rl_worker *w = &r->w[i];
		w->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (w->wakefd < 0) {
			int e = errno;
			rl_free(r);
			errno = e;
			return NULL;
		}
		if (r->uring)
			continue;
		w->bufs = calloc(RL_PEND, RL_MAXPKT);
		w->scratch = calloc(1, sizeof *w->scratch);
		w->evs = calloc(RL_EVENTS, sizeof *w->evs);
		w->epfd = epoll_create1(EPOLL_CLOEXEC);
		if (!w->bufs || !w->scratch || !w->evs || w->epfd < 0) {
			int e = errno;
			rl_free(r);
			errno = e ? e : ENOMEM;
			return NULL;
		}
		struct epoll_event ev = {.events = EPOLLIN, .data.u64 = RL_WAKE};
		epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->wakefd, &ev);
	}
	return r;
}

/* Returns 0 or an errno value; on failure the workers already started are stopped. */
static void rl_stop(rl_relay *r);

static int rl_start(rl_relay *r)
{
	atomic_store(&r->stop, 0);
	/* workers are created with every signal blocked: SIGTERM/SIGINT/SIGHUP always reach a
	 * Python thread, and no handler ever runs on (or interrupts) a packet loop */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (int i = 0; i < r->nworkers; i++) {
		rl_worker *w = &r->w[i];
		if (w->running)
			continue;
		int e = pthread_create(&w->th, NULL, rl_worker_main, w);
		if (e) {
			pthread_sigmask(SIG_SETMASK, &old, NULL);
			rl_stop(r);
			return e;
		}
		w->running = 1;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	/* thread ids are published by the threads themselves; wait (bounded) so callers see all */
	for (int spin = 0; spin < 2000; spin++) {
		int ready = 0;
		for (int i = 0; i < r->nworkers; i++)
			ready += atomic_load(&r->w[i].tid) != 0;
		if (ready == r->nworkers)
			break;
		usleep(500);
	}
	for (int i = 0; i < r->nworkers; i++) {
		int e = atomic_load(&r->w[i].start_err);
		if (e) {
			rl_stop(r);
			return e;
		}
	}
	return 0;
}

/*
 * Raise the stop flag, wake every worker, then join every one of them. Idempotent. After it
 * returns no thread touches the relay, so sockets, sessions and buffers may be freed.
 */
static void rl_stop(rl_relay *r)
{
	atomic_store(&r->stop, 1);
	for (int i = 0; i < r->nworkers; i++) {
		rl_worker *w = &r->w[i];
		if (!w->running || w->wakefd < 0)
			continue;
		uint64_t one = 1;
		if (write(w->wakefd, &one, sizeof one) < 0) {
			/* the 1 s epoll timeout still ends the thread */
		}
	}
	for (int i = 0; i < r->nworkers; i++) {
		rl_worker *w = &r->w[i];
		if (!w->running)
			continue;
		pthread_join(w->th, NULL);
		w->running = 0;
		atomic_store(&w->tid, 0);
	}
}

static void rl_close_leg(rl_leg *l)
{
	for (int k = 0; k < 2; k++) {
		if (l->fd[k] >= 0)
			close(l->fd[k]);
		l->fd[k] = -1;
	}
}

/* Stops the workers, closes every socket and frees everything. */
static void rl_free(rl_relay *r)
{
	if (!r)
		return;
	if (r->w) {
		rl_stop(r);
		me_free(r);
		for (int i = 0; i < r->nworkers; i++) {
			rl_worker *w = &r->w[i];
			if (w->epfd >= 0)
				close(w->epfd);
			if (w->wakefd >= 0)
				close(w->wakefd);
			free(w->bufs);
			free(w->scratch);
			free(w->evs);
			rlu_free(w->u);
			pthread_mutex_destroy(&w->mu);
		}
	}
	if (r->sess) {
		for (int i = 0; i < r->nsess; i++) {
			if (r->sess[i].in_use) {
				rl_close_leg(&r->sess[i].leg[0]);
				rl_close_leg(&r->sess[i].leg[1]);
			}
		}
	}
	pthread_mutex_destroy(&r->mu);
	free(r->w);
	free(r->pool);
	free(r->sess);
	free(r->free_slots);
	free(r);
}

/* ------------------------------------------------------------------ port pool */

static int rl_bind_port(rl_relay *r, int port)
{
	int fd = socket(r->bind_addr.sa.sa_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	int v6only = 0;
	if (r->dual && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	rl_sa a = r->bind_addr;
	if (a.sa.sa_family == AF_INET)
		a.v4.sin_port = htons((uint16_t)port);
	else
		a.v6.sin6_port = htons((uint16_t)port);
	if (bind(fd, &a.sa, r->bind_len) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

static inline void rl_pool_push(rl_relay *r, int pair)
{
	r->pool[(r->pool_head + r->pool_len) % r->npairs] = pair;
	r->pool_len++;
}

static inline int rl_pool_pop(rl_relay *r)
{
	int pair = r->pool[r->pool_head];
	r->pool_head = (r->pool_head + 1) % r->npairs;
	r->pool_len--;
	return pair;
}

/*
 * Take a free pair and bind its RTP and RTCP sockets; pairs some other program holds go to the
 * back of the queue. Caller holds r->mu. Returns 0, or -1 (errno EADDRINUSE = pool exhausted).
 */
static int rl_take_pair(rl_relay *r, rl_leg *l)
{
	int tries = r->pool_len;
	while (tries-- > 0) {
		int pair = rl_pool_pop(r);
		int port = r->port_min + 2 * pair;
		int a = rl_bind_port(r, port);
		int b = a >= 0 ? rl_bind_port(r, port + 1) : -1;
		if (a >= 0 && b >= 0) {
			l->fd[0] = a;
			l->fd[1] = b;
			l->pair = pair;
			l->port = (uint16_t)port;
			return 0;
		}
		int e = errno;
		if (a >= 0)
			close(a);
		rl_pool_push(r, pair);
		if (e != EADDRINUSE && e != EACCES) {
			errno = e;
			return -1;
		}
	}
	errno = EADDRINUSE;
	return -1;
}

static inline uint64_t rl_handle_of(const rl_relay *r, const rl_session *s)
{
	return ((uint64_t)s->gen << 32) | (uint64_t)(s - r->sess);
}

/* Look a handle up; returns NULL if unknown or deleted. */
static inline rl_session *rl_find(rl_relay *r, uint64_t h)
{
	uint32_t slot = (uint32_t)h, gen = (uint32_t)(h >> 32);
	if (slot >= (uint32_t)r->nsess)
		return NULL;
	rl_session *s = &r->sess[slot];
	return s->in_use && s->gen == gen ? s : NULL;
}

static int rl_allocate_once(rl_relay *r, uint64_t *out);

/* Allocate a session (two legs, two port pairs). Returns 0 and *out, or an errno value. */
static int rl_allocate(rl_relay *r, uint64_t *out)
{
	int e = rl_allocate_once(r, out);
	/* io_uring: deleted sessions' sockets are closed by their worker shortly after rl_delete,
	 * which gives their pairs and slot back only then; when none was free, wait for those
	 * closes and try once more */
	if (e == EADDRINUSE && r->uring) {
		rlu_wait_closed(r);
		e = rl_allocate_once(r, out);
	}
	return e;
}

static int rl_allocate_once(rl_relay *r, uint64_t *out)
{
	pthread_mutex_lock(&r->mu);
	if (!r->nfree_slots || r->pool_len < 2) {
		pthread_mutex_unlock(&r->mu);
		return EADDRINUSE;
	}
	int slot = r->free_slots[r->nfree_slots - 1];
	rl_session *s = &r->sess[slot];
	rl_leg legs[2];
	memset(legs, 0, sizeof legs);
	for (int i = 0; i < 2; i++) {
		legs[i].fd[0] = legs[i].fd[1] = -1;
		if (rl_take_pair(r, &legs[i]) < 0) {
			int e = errno;
			if (i == 1) {
				rl_close_leg(&legs[0]);
				rl_pool_push(r, legs[0].pair);
			}
			pthread_mutex_unlock(&r->mu);
			return e;
		}
		legs[i].clock_rate = 8000;
	}
	r->nfree_slots--;
	int wi = (int)(r->next_worker++ % (unsigned)r->nworkers);
	pthread_mutex_unlock(&r->mu);

	rl_worker *w = &r->w[wi];
	pthread_mutex_lock(&w->mu);
	uint32_t gen = s->gen;
	memset(s, 0, sizeof *s);
	s->gen = gen;
	s->worker = wi;
	s->created_ns = rl_now();
	s->leg[0] = legs[0];
	s->leg[1] = legs[1];
	s->in_use = 1;
	for (int i = 0; i < 2; i++) {
		for (int k = 0; k < 2; k++) {
			if (r->rcvbuf > 0)
				setsockopt(s->leg[i].fd[k], SOL_SOCKET, SO_RCVBUF, &r->rcvbuf, sizeof r->rcvbuf);
			if (r->uring)
				continue;
			struct epoll_event ev = {.events = EPOLLIN | EPOLLET};
			ev.data.u64 = ((uint64_t)gen << 32) | ((uint64_t)slot << 2) | ((uint64_t)i << 1) | (uint64_t)k;
			epoll_ctl(w->epfd, EPOLL_CTL_ADD, s->leg[i].fd[k], &ev);
		}
	}
	if (r->uring)
		rlu_queue_arm(r, w, s);
	*out = rl_handle_of(r, s);
	pthread_mutex_unlock(&w->mu);
	return 0;
}

/* Lock the worker owning handle h; returns the session (locked) or NULL (nothing locked). */
static rl_session *rl_lock(rl_relay *r, uint64_t h)
{
	uint32_t slot = (uint32_t)h;
	if (slot >= (uint32_t)r->nsess)
		return NULL;
	for (;;) {
		int wi = r->sess[slot].worker;
		if (wi < 0 || wi >= r->nworkers)
			return NULL;
		pthread_mutex_lock(&r->w[wi].mu);
		rl_session *s = rl_find(r, h);
		if (s && s->worker == wi)
			return s;
		pthread_mutex_unlock(&r->w[wi].mu);
		if (!s)
			return NULL;
	}
}

static inline void rl_unlock(rl_relay *r, rl_session *s)
{
	pthread_mutex_unlock(&r->w[s->worker].mu);
}

static int rl_delete(rl_relay *r, uint64_t h, int wait)
{
	rl_session *s = rl_lock(r, h);
	if (!s)
		return ENOENT;
	rl_worker *w = &r->w[s->worker];
	me_session_end(r, s); /* endpoints first: a recording ends as "hangup" */
	int pairs[2] = {s->leg[0].pair, s->leg[1].pair};
	uint64_t tag = ((uint64_t)s->gen << 32) | ((uint64_t)(s - r->sess) << 2);
	s->in_use = 0;
	s->gen++;
	int slot = (int)(s - r->sess);
	if (r->uring) {
		/* may wait for the worker, releasing the mutex meanwhile; when the worker took the
		 * sockets, it gives pairs and slot back once it has closed them (rl_give_back) */
		if (rlu_delete(r, w, s, tag, wait, pairs, slot)) {
			pthread_mutex_unlock(&w->mu);
			return 0;
		}
	} else {
		for (int i = 0; i < 2; i++) {
			for (int k = 0; k < 2; k++)
				epoll_ctl(w->epfd, EPOLL_CTL_DEL, s->leg[i].fd[k], NULL);
			rl_close_leg(&s->leg[i]);
		}
	}
	pthread_mutex_unlock(&w->mu);
	rl_give_back(r, pairs, slot, 0);
	return 0;
}

/* A deleted session's sockets are closed: its port pairs go to the back of the pool and its
 * slot is free again. ``pending`` = they were counted in pending_pairs (closed by the worker).
 * Takes r->mu; may be called with a worker mutex held (no path takes a worker mutex while
 * holding r->mu). */
static void rl_give_back(rl_relay *r, const int pairs[2], int slot, int pending)
{
	pthread_mutex_lock(&r->mu);
	rl_pool_push(r, pairs[0]);
	rl_pool_push(r, pairs[1]);
	r->free_slots[r->nfree_slots++] = slot;
	if (pending)
		r->pending_pairs -= 2;
	pthread_mutex_unlock(&r->mu);
}

/* Set a leg's SDP address. rtcp_port 0 = port + 1. Returns 0, ENOENT, or a negative parse code. */
static int rl_set_peer(rl_relay *r, uint64_t h, int li, const char *host, int port, int rtcp_port, int mux)
{
	rl_sa a, b;
	int e = rl_parse_peer(r, host, port, &a);
	if (e)
		return e;
	if (mux)
		b = a;
	else if ((e = rl_parse_peer(r, host, rtcp_port ? rtcp_port : port + 1, &b)))
		return e;
	rl_session *s = rl_lock(r, h);
	if (!s)
		return ENOENT;
	rl_leg *l = &s->leg[li];
	l->sdp[0] = a;
	l->sdp[1] = b;
	l->rtcp_mux = mux;
	/* the SDP address is only the first target: a latched source keeps precedence */
	if (!l->latched[0] || r->strict)
		l->peer[0] = a;
	if (!l->latched[1] || r->strict || mux)
		l->peer[1] = mux ? l->peer[0] : b;
	rl_unlock(r, s);
	return 0;
}

/* Accept the next source as the new peer (after a re-INVITE); sending continues to the old one. */
static int rl_relatch(rl_relay *r, uint64_t h, int li)
{
	rl_session *s = rl_lock(r, h);
	if (!s)
		return ENOENT;
	s->leg[li].latched[0] = s->leg[li].latched[1] = 0;
	s->leg[li].was[0].sa.sa_family = s->leg[li].was[1].sa.sa_family = 0;
	rl_unlock(r, s);
	return 0;
}

/*
 * The leg's party changes (a transfer, a pickup, a call move): send to the new party's SDP
 * address (set_peer just before) at once, and let its first packet latch. Until then, and for
 * at most silence_ns, the old party's packets are still relayed but cannot latch.
 */
static int rl_switch(rl_relay *r, uint64_t h, int li)
{
	rl_session *s = rl_lock(r, h);
	if (!s)
		return ENOENT;
	rl_leg *l = &s->leg[li];
	for (int k = 0; k < 2; k++) {
		if (l->latched[k])
			l->was[k] = l->peer[k];
		else
			l->was[k].sa.sa_family = 0;
		l->latched[k] = 0;
		if (l->sdp[k].sa.sa_family && !r->strict)
			l->peer[k] = l->sdp[k];
	}
	if (l->rtcp_mux)
		l->peer[1] = l->peer[0];
	l->was_until = rl_now() + r->silence_ns;
	rl_unlock(r, s);
	return 0;
}

/*
 * A party moves from session `from` (leg fli faced it) to session `h` (leg li faces it now):
 * the stream leg li sends continues the one the party was receiving from `from` (its SSRC,
 * sequence and timestamp), rewritten from the next relayed packet on (media_rtp.h). Without
 * it the party sees another relay port's stream with a new SSRC and lower sequence numbers,
 * which some jitter buffers drop as late (an attended transfer's target).
 */
static int rl_adopt_tx(rl_relay *r, uint64_t h, int li, uint64_t from, int fli)
{
	rl_session *o = rl_lock(r, from);
	if (!o)
		return ENOENT;
	me_txid t = o->leg[fli].tx;
	rl_unlock(r, o);
	rl_session *s = rl_lock(r, h);
	if (!s)
		return ENOENT;
	if (t.have) {
		me_txid *d = &s->leg[li].tx;
		d->ssrc = t.ssrc;
		d->seq = t.seq;
		d->ts = t.ts;
		d->dur = t.dur;
		d->ns = t.ns;
		d->have = 1;
		d->rewrite = 1;
		d->mapped = 0;
	}
	rl_unlock(r, s);
	return 0;
}

static int rl_set_hold(rl_relay *r, uint64_t h, int hold)
{
	rl_session *s = rl_lock(r, h);
	if (!s)
		return ENOENT;
	s->hold = hold;
	rl_unlock(r, s);
	return 0;
}

static int rl_set_clock_rate(rl_relay *r, uint64_t h, int li, uint32_t rate)
{
	rl_session *s = rl_lock(r, h);
	if (!s)
		return ENOENT;
	rl_leg *l = &s->leg[li];
	if (l->clock_rate != rate) {
		l->clock_rate = rate;
		l->st.have_transit = 0;
		l->st.jitter_q4 = 0;
	}
	rl_unlock(r, s);
	return 0;
}

/* Mark a leg as carrying T.38 UDPTL (on = 1) or RTP again (on = 0), after an image/t38 offer
 * or answer. Both legs of a relayed session are marked by the signalling. */
static int rl_set_udptl(rl_relay *r, uint64_t h, int li, int on)
{
	rl_session *s = rl_lock(r, h);
	if (!s)
		return ENOENT;
	s->leg[li].udptl = on ? 1 : 0;
	rl_unlock(r, s);
	return 0;
}

static void rl_leg_copy(const rl_leg *l, rl_leg_info *o)
{
	memset(o, 0, sizeof *o);
	o->port = l->port;
	o->rtcp_port = l->rtcp_mux ? l->port : l->port + 1;
	o->rtcp_mux = l->rtcp_mux;
	o->udptl = l->udptl;
	o->latched = l->latched[0];
	rl_sa_host(&l->peer[0], o->peer_host);
	o->peer_port = rl_sa_port(&l->peer[0]);
	rl_sa_host(&l->sdp[0], o->sdp_host);
	o->sdp_port = rl_sa_port(&l->sdp[0]);
	o->clock_rate = l->clock_rate;
	const rl_stream *s = &l->st;
	o->ssrc = s->ssrc;
	o->packets = s->packets;
	o->bytes = s->bytes;
	o->rtcp_packets = s->rtcp_packets;
	o->rtcp_bytes = s->rtcp_bytes;
	o->dropped_source = s->dropped_source;
	o->dropped_nopeer = s->dropped_nopeer;
	o->dropped_bad = s->dropped_bad;
	o->send_errors = s->send_errors;
	o->relatched = s->relatched;
	o->expected = s->expected_before + rl_expected(s);
	o->lost = s->lost_before + (s->have_seq ? rl_expected(s) - (int64_t)s->received : 0);
	o->jitter = s->jitter_q4 >> 4;
	o->jitter_ms = l->clock_rate ? (s->jitter_q4 / 16.0) * 1000.0 / l->clock_rate : 0.0;
	o->last_ns = s->last_ns;
	o->last_rtcp_ns = s->last_rtcp_ns;
}

/* Copy both legs; *hold and *created_ns too. Returns 0 or ENOENT. */
static int rl_query(rl_relay *r, uint64_t h, rl_leg_info *a, rl_leg_info *b, int *hold, int64_t *created_ns)
{
	rl_session *s = rl_lock(r, h);
	if (!s)
		return ENOENT;
	rl_leg_copy(&s->leg[0], a);
	rl_leg_copy(&s->leg[1], b);
	*hold = s->hold;
	*created_ns = s->created_ns;
	rl_unlock(r, s);
	return 0;
}

/*
 * Sessions not on hold with no RTP in either direction for timeout_ns (counted from creation
 * when nothing arrived yet). Writes up to max handles; returns how many.
 */
static int rl_timed_out(rl_relay *r, int64_t timeout_ns, uint64_t *out, int max)
{
	int n = 0;
	int64_t now = rl_now();
	for (int wi = 0; wi < r->nworkers && n < max; wi++) {
		pthread_mutex_lock(&r->w[wi].mu);
		for (int i = 0; i < r->nsess && n < max; i++) {
			rl_session *s = &r->sess[i];
			if (!s->in_use || s->worker != wi || s->hold)
				continue;
			int64_t last = s->created_ns;
			if (s->leg[0].st.last_ns > last)
				last = s->leg[0].st.last_ns;
			if (s->leg[1].st.last_ns > last)
				last = s->leg[1].st.last_ns;
			if (now - last >= timeout_ns)
				out[n++] = rl_handle_of(r, s);
		}
		pthread_mutex_unlock(&r->w[wi].mu);
	}
	return n;
}

/* Live session handles; returns how many were written (up to max). */
static int rl_list(rl_relay *r, uint64_t *out, int max)
{
	int n = 0;
	pthread_mutex_lock(&r->mu);
	for (int i = 0; i < r->nsess && n < max; i++)
		if (r->sess[i].in_use)
			out[n++] = rl_handle_of(r, &r->sess[i]);
	pthread_mutex_unlock(&r->mu);
	return n;
}

static int rl_worker_tid(rl_relay *r, int i)
{
	return i >= 0 && i < r->nworkers ? atomic_load(&r->w[i].tid) : 0;
}

static int rl_free_pairs(rl_relay *r)
{
	pthread_mutex_lock(&r->mu);
	int n = r->pool_len + r->pending_pairs; /* pending: closing, free in a moment */
	pthread_mutex_unlock(&r->mu);
	return n;
}

#include "media_engine.h"

#endif
