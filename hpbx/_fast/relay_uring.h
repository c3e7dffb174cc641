/*
 * relay_uring.h: the io_uring packet loop of hpbx._fast.relay (included by relay_engine.h).
 *
 * Why: with one socket per port and 50 packets/s per stream, the epoll loop pays an epoll
 * event, a recvmmsg and a sendto per packet, so its cost is syscalls, not work. Here every
 * socket has one multishot recvmsg that fills buffers from a provided-buffer ring, and the
 * sends of a whole batch go to the kernel in the same io_uring_enter that waits for the next
 * batch: one syscall per wakeup instead of two or three per packet.
 *
 * The ring is single-issuer with deferred task work: only the worker thread submits, and
 * receive completions run when it asks for events, so other threads never touch the ring.
 * Commands reach it through lists under the worker mutex and the wake eventfd:
 *   - allocate queues the new session's sockets to be armed;
 *   - delete of an armed session hands its sockets to the worker, which cancels their
 *     receives, closes them once the kernel has let go of them, and signals the waiting
 *     delete: a deleted session's ports are free again when rl_delete returns, as with epoll.
 * All submissions happen on the worker thread, and a socket is closed only by the thread that
 * submits, so no queued SQE can ever name a descriptor that was closed and reused meanwhile.
 *
 * Needs Linux 6.1 (DEFER_TASKRUN; multishot recvmsg and buffer rings are older); rl_new falls
 * back to epoll when the ring cannot be set up (old kernel, seccomp, io_uring_disabled).
 */
#ifndef HPBX_RELAY_URING_H
#define HPBX_RELAY_URING_H

#include <linux/io_uring.h>
#include <poll.h>
#include <sys/mman.h>

#define RLU_NBUF 1024 /* receive buffers per worker (a power of two) */
#define RLU_BUFSZ 2112 /* io_uring_recvmsg_out (16) + address room (28) + RL_MAXPKT, rounded up */
#define RLU_SQ 512
#define RLU_CQ 4096
#define RLU_BGID 1
#define RLU_DEAD_MAX 64 /* deleted sessions waiting for their receives to end */

/* user_data: bits 30-31 of the low word say what completed (a recv's tag keeps gen/slot/leg/k) */
#define RLU_RECV 0u
#define RLU_SEND 1u
#define RLU_WAKE 2u
#define RLU_CANCEL 3u
#define RLU_KIND(ud) (((uint32_t)(ud)) >> 30)
#define RLU_UD(kind, v) (((uint64_t)(kind) << 30) | (uint64_t)(v))

/* media engine hooks (media_engine.h): sends with value >= RLU_NBUF, the clock's poll is
 * RLU_WAKE with value 1 */
static void me_uring_sent(rl_worker *w, unsigned slot, int res);
static void me_uring_tick(rl_relay *r, rl_worker *w, struct io_uring_cqe *c, int closing);
static void me_uring_poll(rl_relay *r, rl_worker *w, int closing);

typedef struct {
	struct msghdr mh;
	struct iovec iov;
	rl_sa to;     /* copied: the send may run after the session changed its peer */
	uint64_t tag; /* the leg the datagram arrived on, whose send_errors a failure counts in */
} rlu_out;

typedef struct {
	uint64_t id;   /* the waiting delete's ticket */
	uint64_t tag;  /* gen and slot of the deleted session (leg and k bits zero) */
	uint8_t armed; /* receives (bit leg*2+k) not yet seen ending */
	uint8_t cancel_sent;
	int fd[4];
	int pairs[2];  /* given back to the pool, with the slot, once the sockets are closed */
	int slot;
} rlu_dead;

typedef struct rl_uring {
	int fd;
	unsigned sq_entries, cq_entries;
	void *sq_ring, *cq_ring;
	size_t sq_ring_sz, cq_ring_sz;
	struct io_uring_sqe *sqes;
	size_t sqes_sz;
	unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
	unsigned *cq_head, *cq_tail, *cq_mask;
	struct io_uring_cqe *cqes;
	unsigned sq_local_tail;
	struct io_uring_buf_ring *br;
	size_t br_sz;
	uint16_t br_tail;
	uint8_t *bufs;
	rlu_out *out;
	struct msghdr rmsg; /* recvmsg template: room for the source address, no control data */
	int64_t outstanding; /* requests holding a file: armed receives, the wake poll, sends */
	int enabled;
	/* from command threads, under the worker mutex */
	uint64_t *arm; /* session tags (gen/slot) whose sockets wait for their receives */
	int narm, arm_cap;
	rlu_dead dead[RLU_DEAD_MAX];
	int ndead;
	uint64_t dead_ids; /* tickets: a delete waits until its entry has left dead[] */
	pthread_cond_t cv;
} rl_uring;

static inline int rlu_setup(unsigned entries, struct io_uring_params *p)
{
	return (int)syscall(__NR_io_uring_setup, entries, p);
}

static inline int rlu_register(int fd, unsigned op, void *arg, unsigned n)
{
	return (int)syscall(__NR_io_uring_register, fd, op, arg, n);
}

static void rlu_free(rl_uring *u)
{
	if (!u)
		return;
	if (u->sqes && u->sqes != MAP_FAILED)
		munmap(u->sqes, u->sqes_sz);
	if (u->cq_ring && u->cq_ring != MAP_FAILED && u->cq_ring != u->sq_ring)
		munmap(u->cq_ring, u->cq_ring_sz);
	if (u->sq_ring && u->sq_ring != MAP_FAILED)
		munmap(u->sq_ring, u->sq_ring_sz);
	if (u->fd >= 0)
		close(u->fd); /* after the worker drained it: nothing in flight holds a socket */
	if (u->br && u->br != MAP_FAILED)
		munmap(u->br, u->br_sz);
	for (int i = 0; i < u->ndead; i++)
		for (int j = 0; j < 4; j++)
			if (u->dead[i].fd[j] >= 0)
				close(u->dead[i].fd[j]);
	free(u->bufs);
	free(u->out);
	free(u->arm);
	pthread_cond_destroy(&u->cv);
	free(u);
}

/*
 * Create a worker's ring, disabled until its thread enables it (single issuer = that thread),
 * with its buffer ring registered. Returns NULL with errno set when io_uring is unusable.
 */
static rl_uring *rlu_new(int nsess)
{
	rl_uring *u = calloc(1, sizeof *u);
	if (!u)
		return NULL;
	u->fd = -1;
	pthread_cond_init(&u->cv, NULL);
	struct io_uring_params p;
	memset(&p, 0, sizeof p);
	p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER |
		  IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED;
	p.cq_entries = RLU_CQ;
	int e = 0;
	u->fd = rlu_setup(RLU_SQ, &p);
	if (u->fd < 0) {
		e = errno;
		goto fail;
	}
	if (!(p.features & IORING_FEAT_EXT_ARG) || !(p.features & IORING_FEAT_NODROP)) {
		e = ENOSYS;
		goto fail;
	}
	u->sq_entries = p.sq_entries;
	u->cq_entries = p.cq_entries;
	u->sq_ring_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
	u->cq_ring_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	if (p.features & IORING_FEAT_SINGLE_MMAP) {
		if (u->cq_ring_sz > u->sq_ring_sz)
			u->sq_ring_sz = u->cq_ring_sz;
		u->cq_ring_sz = u->sq_ring_sz;
	}
	u->sq_ring = mmap(NULL, u->sq_ring_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, u->fd,
			  IORING_OFF_SQ_RING);
	if (u->sq_ring == MAP_FAILED) {
		e = errno;
		goto fail;
	}
	if (p.features & IORING_FEAT_SINGLE_MMAP)
		u->cq_ring = u->sq_ring;
	else
		u->cq_ring = mmap(NULL, u->cq_ring_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, u->fd,
				  IORING_OFF_CQ_RING);
	if (u->cq_ring == MAP_FAILED) {
		e = errno;
		goto fail;
	}
	u->sqes_sz = p.sq_entries * sizeof(struct io_uring_sqe);
	u->sqes = mmap(NULL, u->sqes_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, u->fd,
		       IORING_OFF_SQES);
	if (u->sqes == MAP_FAILED) {
		e = errno;
		goto fail;
	}
	uint8_t *sq = u->sq_ring, *cq = u->cq_ring;
	u->sq_head = (unsigned *)(sq + p.sq_off.head);
	u->sq_tail = (unsigned *)(sq + p.sq_off.tail);
	u->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
	u->sq_array = (unsigned *)(sq + p.sq_off.array);
	u->cq_head = (unsigned *)(cq + p.cq_off.head);
	u->cq_tail = (unsigned *)(cq + p.cq_off.tail);
	u->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
	u->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
	u->sq_local_tail = *u->sq_tail;

	u->br_sz = RLU_NBUF * sizeof(struct io_uring_buf);
	u->br = mmap(NULL, u->br_sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	u->bufs = malloc((size_t)RLU_NBUF * RLU_BUFSZ);
	u->out = calloc(RLU_NBUF, sizeof *u->out);
	u->arm_cap = nsess > 16 ? nsess : 16;
	u->arm = calloc((size_t)u->arm_cap, sizeof *u->arm);
	if (u->br == MAP_FAILED || !u->bufs || !u->out || !u->arm) {
		e = ENOMEM;
		goto fail;
	}
	struct io_uring_buf_reg reg;
	memset(&reg, 0, sizeof reg);
	reg.ring_addr = (uint64_t)(uintptr_t)u->br;
	reg.ring_entries = RLU_NBUF;
	reg.bgid = RLU_BGID;
	if (rlu_register(u->fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0) {
		e = errno;
		goto fail;
	}
	for (unsigned i = 0; i < RLU_NBUF; i++) {
		struct io_uring_buf *b = &u->br->bufs[i];
		b->addr = (uint64_t)(uintptr_t)(u->bufs + (size_t)i * RLU_BUFSZ);
		b->len = RLU_BUFSZ;
		b->bid = (uint16_t)i;
	}
	u->br_tail = RLU_NBUF;
	__atomic_store_n(&u->br->tail, u->br_tail, __ATOMIC_RELEASE);
	u->rmsg.msg_namelen = sizeof(rl_sa);
	for (int i = 0; i < RLU_DEAD_MAX; i++)
		for (int j = 0; j < 4; j++)
			u->dead[i].fd[j] = -1;
	return u;
fail:
	rlu_free(u);
	errno = e ? e : ENOSYS;
	return NULL;
}

static inline void rlu_buf_put(rl_uring *u, unsigned bid)
{
	struct io_uring_buf *b = &u->br->bufs[u->br_tail & (RLU_NBUF - 1)];
	b->addr = (uint64_t)(uintptr_t)(u->bufs + (size_t)bid * RLU_BUFSZ);
	b->len = RLU_BUFSZ;
	b->bid = (uint16_t)bid;
	u->br_tail++;
}

static inline void rlu_buf_publish(rl_uring *u)
{
	__atomic_store_n(&u->br->tail, u->br_tail, __ATOMIC_RELEASE);
}

/*
 * Submit what is queued and, with wait_nr > 0, sleep until that many completions (or the
 * timeout). Deferred receive work runs here, inside the kernel, before it returns.
 */
static int rlu_enter(rl_uring *u, unsigned wait_nr, int64_t timeout_ns)
{
	rlu_buf_publish(u);
	__atomic_store_n(u->sq_tail, u->sq_local_tail, __ATOMIC_RELEASE);
	unsigned pending = u->sq_local_tail - __atomic_load_n(u->sq_head, __ATOMIC_ACQUIRE);
	unsigned flags = IORING_ENTER_GETEVENTS;
	struct io_uring_getevents_arg arg;
	struct __kernel_timespec ts;
	void *argp = NULL;
	size_t argsz = 0;
	if (timeout_ns > 0) {
		ts.tv_sec = timeout_ns / 1000000000LL;
		ts.tv_nsec = timeout_ns % 1000000000LL;
		memset(&arg, 0, sizeof arg);
		arg.ts = (uint64_t)(uintptr_t)&ts;
		argp = &arg;
		argsz = sizeof arg;
		flags |= IORING_ENTER_EXT_ARG;
	}
	int ret = (int)syscall(__NR_io_uring_enter, u->fd, pending, wait_nr, flags, argp, argsz);
	return ret < 0 ? -errno : ret;
}

/* The next free SQE (zeroed); when the queue is full it is submitted first. */
static struct io_uring_sqe *rlu_sqe(rl_uring *u)
{
	for (int tries = 0; tries < 3; tries++) {
		unsigned head = __atomic_load_n(u->sq_head, __ATOMIC_ACQUIRE);
		if (u->sq_local_tail - head < u->sq_entries) {
			unsigned idx = u->sq_local_tail & *u->sq_mask;
			struct io_uring_sqe *sqe = &u->sqes[idx];
			memset(sqe, 0, sizeof *sqe);
			u->sq_array[idx] = idx;
			u->sq_local_tail++;
			return sqe;
		}
		rlu_enter(u, 0, 0);
	}
	return NULL;
}

static void rlu_arm_recv(rl_uring *u, rl_session *s, uint64_t tag, int li, int k)
{
	int fd = s->leg[li].fd[k];
	struct io_uring_sqe *sqe;
	if (fd < 0)
		return;
	if (!(sqe = rlu_sqe(u))) {
		/* no room even after a flush: try again with the next round's commands */
		if (u->narm < u->arm_cap)
			u->arm[u->narm++] = tag;
		return;
	}
	sqe->opcode = IORING_OP_RECVMSG;
	sqe->fd = fd;
	sqe->addr = (uint64_t)(uintptr_t)&u->rmsg;
	sqe->len = 1;
	sqe->ioprio = IORING_RECV_MULTISHOT;
	sqe->flags = IOSQE_BUFFER_SELECT;
	sqe->buf_group = RLU_BGID;
	sqe->user_data = tag | ((uint64_t)li << 1) | (uint64_t)k;
	s->armed |= (uint8_t)(1u << (li * 2 + k));
	u->outstanding++;
}

static void rlu_arm_wake(rl_worker *w, rl_uring *u)
{
	struct io_uring_sqe *sqe = rlu_sqe(u);
	if (!sqe)
		return;
	sqe->opcode = IORING_OP_POLL_ADD;
	sqe->fd = w->wakefd;
	sqe->len = IORING_POLL_ADD_MULTI;
	sqe->poll32_events = POLLIN;
	sqe->user_data = RLU_UD(RLU_WAKE, 0);
	u->outstanding++;
}

static inline uint64_t rlu_tag(const rl_relay *r, const rl_session *s)
{
	return ((uint64_t)s->gen << 32) | ((uint64_t)(s - r->sess) << 2);
}

/* Close a deleted session's sockets (the kernel holds none of them any more) and release
 * the delete waiting for it. */
static void rlu_dead_close(rl_relay *r, rl_uring *u, int i)
{
	rlu_dead *d = &u->dead[i];
	for (int j = 0; j < 4; j++)
		if (d->fd[j] >= 0)
			close(d->fd[j]);
	/* only now may the ports be bound and the slot be used again: no receive of the old
	 * session is left that could complete against a new one */
	rl_give_back(r, d->pairs, d->slot, 1);
	u->dead[i] = u->dead[--u->ndead];
	for (int j = 0; j < 4; j++)
		u->dead[u->ndead].fd[j] = -1;
	pthread_cond_broadcast(&u->cv);
}

/* A receive of a deleted session ended: close its sockets when it was the last one. */
static void rlu_dead_ended(rl_relay *r, rl_uring *u, uint64_t ud)
{
	uint64_t tag = ud & ~(uint64_t)3;
	for (int i = 0; i < u->ndead; i++) {
		rlu_dead *d = &u->dead[i];
		if (d->tag != tag)
			continue;
		d->armed &= (uint8_t)~(1u << (ud & 3));
		if (!d->armed)
			rlu_dead_close(r, u, i);
		return;
	}
}

static int rlu_dead_pending(const rl_uring *u, uint64_t id)
{
	for (int i = 0; i < u->ndead; i++)
		if (u->dead[i].id == id)
			return 1;
	return 0;
}

/* Under the worker mutex: arm the sockets of sessions allocated since the last batch, and ask
 * the kernel to end the receives of deleted ones. */
static void rlu_commands(rl_relay *r, rl_uring *u)
{
	for (int i = 0; i < u->narm; i++) {
		uint64_t tag = u->arm[i];
		rl_session *s = &r->sess[(uint32_t)tag >> 2];
		if (!s->in_use || s->gen != (uint32_t)(tag >> 32))
			continue; /* deleted before it was armed */
		for (int b = 0; b < 4; b++)
			if (!(s->armed & (1u << b)))
				rlu_arm_recv(u, s, tag, b >> 1, b & 1);
	}
	u->narm = 0;
	for (int i = u->ndead - 1; i >= 0; i--) {
		rlu_dead *d = &u->dead[i];
		if (d->cancel_sent)
			continue;
		if (!d->armed) {
			/* every SQE naming these sockets went in with the last enter: safe to close */
			rlu_dead_close(r, u, i);
			continue;
		}
		for (int b = 0; b < 4; b++) {
			struct io_uring_sqe *sqe;
			if (!(d->armed & (1u << b)) || !(sqe = rlu_sqe(u)))
				continue;
			sqe->opcode = IORING_OP_ASYNC_CANCEL;
			sqe->addr = d->tag | (uint64_t)b; /* b = leg << 1 | k, the recv's own low bits */
			sqe->user_data = RLU_UD(RLU_CANCEL, 0);
		}
		d->cancel_sent = 1;
	}
}

/* One receive completion: route the datagram (its buffer becomes the send's) or recycle it. */
static void rlu_on_recv(rl_relay *r, rl_uring *u, struct io_uring_cqe *c, int closing)
{
	uint64_t ud = c->user_data;
	uint32_t slot = ((uint32_t)ud & 0x3fffffffu) >> 2;
	int li = (ud >> 1) & 1, k = ud & 1;
	rl_session *s = slot < (uint32_t)r->nsess ? &r->sess[slot] : NULL;
	int live = s && s->in_use && s->gen == (uint32_t)(ud >> 32);
	if (c->flags & IORING_CQE_F_BUFFER) {
		unsigned bid = c->flags >> IORING_CQE_BUFFER_SHIFT;
		uint8_t *buf = u->bufs + (size_t)bid * RLU_BUFSZ;
		int sent = 0;
		if (live && !closing && c->res >= (int)sizeof(struct io_uring_recvmsg_out)) {
			const struct io_uring_recvmsg_out *m = (const void *)buf;
			uint8_t *payload = buf + sizeof *m + u->rmsg.msg_namelen;
			size_t len = m->payloadlen;
			if ((m->flags & MSG_TRUNC) || len > RL_MAXPKT)
				len = 0; /* oversize: counted as bad */
			rl_sa src;
			memset(&src, 0, sizeof src);
			memcpy(&src, buf + sizeof *m, m->namelen < sizeof src ? m->namelen : sizeof src);
			const rl_sa *to;
			int ofd;
			struct io_uring_sqe *sqe;
			if (!rl_route(r, s, li, k, &src, payload, len, rl_now(), &ofd, &to)) {
				/* dropped: counted by rl_route */
			} else if (!(sqe = rlu_sqe(u))) {
				s->leg[li].st.send_errors++; /* the ring refused even a flush: drop */
			} else {
				rlu_out *o = &u->out[bid];
				o->to = *to;
				o->tag = ud;
				o->iov.iov_base = payload;
				o->iov.iov_len = len;
				memset(&o->mh, 0, sizeof o->mh);
				o->mh.msg_name = &o->to;
				o->mh.msg_namelen = rl_sa_len(to);
				o->mh.msg_iov = &o->iov;
				o->mh.msg_iovlen = 1;
				sqe->opcode = IORING_OP_SENDMSG;
				sqe->fd = ofd;
				sqe->addr = (uint64_t)(uintptr_t)&o->mh;
				sqe->len = 1;
				sqe->msg_flags = MSG_DONTWAIT; /* a full send buffer drops, as with epoll */
				sqe->user_data = RLU_UD(RLU_SEND, bid);
				u->outstanding++;
				sent = 1;
			}
		}
		if (!sent)
			rlu_buf_put(u, bid);
	}
	if (c->flags & IORING_CQE_F_MORE)
		return;
	/* the receive ended: cancelled, out of buffers, or a socket error (an ICMP error queued
	 * on a UDP socket ends a recvmsg too); a live session's socket is armed again */
	u->outstanding--;
	if (live) {
		s->armed &= (uint8_t)~(1u << (li * 2 + k));
		if (!closing && c->res != -EBADF)
			rlu_arm_recv(u, s, ud & ~(uint64_t)3, li, k);
	} else {
		rlu_dead_ended(r, u, ud);
	}
}

/* Handle every completion there is; returns how many. */
static int rlu_reap(rl_relay *r, rl_worker *w, rl_uring *u, int closing)
{
	int n = 0;
	unsigned head = *u->cq_head;
	for (;;) {
		unsigned tail = __atomic_load_n(u->cq_tail, __ATOMIC_ACQUIRE);
		if (head == tail)
			break;
		for (; head != tail; head++, n++) {
			struct io_uring_cqe *c = &u->cqes[head & *u->cq_mask];
			uint64_t ud = c->user_data;
			switch (RLU_KIND(ud)) {
			case RLU_RECV:
				rlu_on_recv(r, u, c, closing);
				break;
			case RLU_SEND: {
				if (((uint32_t)ud & 0x3fffffffu) >= RLU_NBUF) {
					me_uring_sent(w, ((uint32_t)ud & 0x3fffffffu) - RLU_NBUF, c->res);
					break;
				}
				unsigned bid = (unsigned)ud & (RLU_NBUF - 1);
				u->outstanding--;
				if (c->res < 0) {
					uint64_t t = u->out[bid].tag;
					rl_session *s = &r->sess[((uint32_t)t & 0x3fffffffu) >> 2];
					if (s->in_use && s->gen == (uint32_t)(t >> 32))
						s->leg[(t >> 1) & 1].st.send_errors++;
				}
				rlu_buf_put(u, bid);
				break;
			}
			case RLU_WAKE: {
				if (((uint32_t)ud & 0x3fffffffu) == 1) {
					me_uring_tick(r, w, c, closing);
					break;
				}
				uint64_t v;
				if (read(w->wakefd, &v, sizeof v) < 0) {
					/* EAGAIN: another wakeup already took the count */
				}
				if (!(c->flags & IORING_CQE_F_MORE)) {
					u->outstanding--;
					if (!closing)
						rlu_arm_wake(w, u);
				}
				break;
			}
			default: /* RLU_CANCEL: the target's own completion is what counts */
				break;
			}
			/* hand the slot back at once: handling may submit, and the kernel needs room */
			__atomic_store_n(u->cq_head, head + 1, __ATOMIC_RELEASE);
		}
	}
	return n;
}

/*
 * The worker loop. One io_uring_enter per round submits the sends of the previous batch and
 * waits for the next completions; the batch is handled under the worker mutex.
 */
static void rlu_loop(rl_relay *r, rl_worker *w)
{
	rl_uring *u = w->u;
	pthread_mutex_lock(&w->mu);
	u->enabled = 1; /* rl_worker_main enabled the ring on this thread */
	rlu_arm_wake(w, u);
	rlu_commands(r, u);
	pthread_mutex_unlock(&w->mu);
	while (!atomic_load_explicit(&r->stop, memory_order_relaxed)) {
		rlu_enter(u, 1, 1000000000LL);
		pthread_mutex_lock(&w->mu);
		if (atomic_load(&r->stop)) {
			pthread_mutex_unlock(&w->mu);
			break;
		}
		rlu_reap(r, w, u, 0);
		if (u->narm || u->ndead)
			rlu_commands(r, u);
		me_uring_poll(r, w, 0);
		pthread_mutex_unlock(&w->mu);
	}
	/* stop: end every request, so that no socket stays held by the ring after the join */
	pthread_mutex_lock(&w->mu);
	struct io_uring_sqe *sqe = rlu_sqe(u);
	if (sqe) {
		sqe->opcode = IORING_OP_ASYNC_CANCEL;
		sqe->cancel_flags = IORING_ASYNC_CANCEL_ALL | IORING_ASYNC_CANCEL_ANY;
		sqe->user_data = RLU_UD(RLU_CANCEL, 0);
	}
	int64_t deadline = rl_now() + 2000000000LL;
	while (u->outstanding > 0 && rl_now() < deadline) {
		rlu_enter(u, 1, 20000000LL);
		rlu_reap(r, w, u, 1);
	}
	u->enabled = 0;
	pthread_cond_broadcast(&u->cv);
	pthread_mutex_unlock(&w->mu);
}

/* rl_allocate, under the worker mutex: the worker arms the new session's sockets. */
static void rlu_queue_arm(rl_relay *r, rl_worker *w, rl_session *s)
{
	rl_uring *u = w->u;
	if (u->narm == u->arm_cap) {
		uint64_t *a = realloc(u->arm, sizeof *a * (size_t)u->arm_cap * 2);
		if (!a)
			return; /* not armed: the session relays nothing, and its stats show it */
		u->arm = a;
		u->arm_cap *= 2;
	}
	u->arm[u->narm++] = rlu_tag(r, s);
	if (w->running) {
		uint64_t one = 1;
		if (write(w->wakefd, &one, sizeof one) < 0) {
			/* the counter is full: the worker is already due to wake */
		}
	}
}

static void rlu_wait(rl_worker *w, int64_t ns)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += ns;
	while (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_cond_timedwait(&w->u->cv, &w->mu, &ts);
}

/*
 * rl_delete, under the worker mutex, after the session was marked deleted (tag = its old
 * gen/slot). While the worker runs, the sockets go to it (an SQE it queued may still name
 * them, and the kernel may hold them in a receive), and this waits, bounded, until it has
 * closed them. Returns with the mutex held.
 */
static int rlu_delete(rl_relay *r, rl_worker *w, rl_session *s, uint64_t tag, int wait,
                      const int pairs[2], int slot)
{
	rl_uring *u = w->u;
	int64_t deadline = rl_now() + 2000000000LL;
	while (u->enabled && u->ndead == RLU_DEAD_MAX && rl_now() < deadline)
		rlu_wait(w, 10000000);
	if (!u->enabled || u->ndead == RLU_DEAD_MAX) {
		/* not started (nothing was ever submitted), stopped (drained), or stuck: close here */
		rl_close_leg(&s->leg[0]);
		rl_close_leg(&s->leg[1]);
		s->armed = 0;
		return 0; /* closed here: the caller gives pairs and slot back */
	}
	rlu_dead *d = &u->dead[u->ndead++];
	d->id = ++u->dead_ids;
	d->tag = tag;
	d->armed = s->armed;
	d->cancel_sent = 0;
	d->pairs[0] = pairs[0];
	d->pairs[1] = pairs[1];
	d->slot = slot;
	pthread_mutex_lock(&r->mu);
	r->pending_pairs += 2;
	pthread_mutex_unlock(&r->mu);
	for (int i = 0; i < 2; i++)
		for (int k = 0; k < 2; k++) {
			d->fd[i * 2 + k] = s->leg[i].fd[k];
			s->leg[i].fd[k] = -1;
		}
	s->armed = 0;
	uint64_t id = d->id, one = 1;
	if (write(w->wakefd, &one, sizeof one) < 0) {
		/* the counter is full: the worker is already due to wake */
	}
	/* Without ``wait`` (the call path) this returns at once: the worker closes the sockets
	 * and then gives the pairs and the slot back (rlu_dead_close), so until then nothing can
	 * bind those ports or reuse the slot while a receive of the old session may still
	 * complete; free_pairs counts them as free meanwhile, and an allocate that finds the pool
	 * empty waits for those closes (rlu_wait_closed). Waiting here cost the signalling thread
	 * a round trip to the worker for every call. */
	while (wait && u->enabled && rlu_dead_pending(u, id) && rl_now() < deadline)
		rlu_wait(w, 10000000);
	return 1;
}

/* A session could be allocated from what the pool holds now (r->mu taken inside). */
static int rl_pool_room(rl_relay *r)
{
	pthread_mutex_lock(&r->mu);
	int room = r->nfree_slots > 0 && r->pool_len >= 2;
	pthread_mutex_unlock(&r->mu);
	return room;
}

/* rl_allocate found no pair it could bind: wait (bounded) until the workers have closed the
 * sockets of the sessions deleted so far, or enough came back for one session. Returns 1 if
 * some were pending. No lock held. */
static int rlu_wait_closed(rl_relay *r)
{
	int waited = 0;
	int64_t deadline = rl_now() + 2000000000LL;
	for (int i = 0; i < r->nworkers; i++) {
		rl_worker *w = &r->w[i];
		pthread_mutex_lock(&w->mu);
		rl_uring *u = w->u;
		while (u && u->enabled && u->ndead && !rl_pool_room(r) && rl_now() < deadline) {
			waited = 1;
			rlu_wait(w, 10000000);
		}
		pthread_mutex_unlock(&w->mu);
	}
	return waited;
}

#endif
