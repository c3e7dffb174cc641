/*
 * media_engine.h: media endpoints inside the relay's worker threads (included at the end of
 * relay_engine.h, so it sees the whole relay core; the relay calls in through the hooks
 * declared in media_rtp.h).
 *
 * What runs where:
 *   - A leg with an endpoint (rl_leg.ep) is terminated: what arrives on it is consumed here
 *     (RFC 4733 and in-band digits, recorder, room input) instead of being relayed, and what the
 *     endpoint produces leaves from the leg's port to its latched (or SDP) peer.
 *   - One media clock per worker: a timerfd with absolute 2 ms deadlines, polled by the
 *     worker's own loop (epoll item, or a multishot poll in the io_uring loop). An endpoint
 *     sends every ptime (10/20/30 ms = 5/10/15 ticks) on a phase of its own, so a worker's
 *     players are spread over the ticks of a ptime instead of all sending in one burst. Each
 *     tick serves the endpoints due and the rooms of the worker; with io_uring its packets go
 *     to the kernel in the one io_uring_enter that follows. A worker with no endpoint
 *     disarms its timer: no cost when nobody plays.
 *   - Prompts (me_prompt) are encoded once to PCMA and PCMU, immutable and reference counted;
 *     players point into them. Playing = RTP header + memcpy.
 *   - Rooms (mixer) are owned by one worker, which mixes every 20 ms; members on other workers
 *     hand their audio in and take their frames out under the room's mutex.
 *   - Recorders decode into 1 s buffers; a writer thread per relay writes them and finishes the
 *     WAV file, then posts record_done.
 *   - Events go to one bounded queue per relay; an eventfd tells Python's loop to drain it.
 *
 * Locks: a worker's mutex protects its sessions and endpoints (commands take it through
 * rl_lock, the worker holds it while it handles a batch or a tick). Order: worker mutex ->
 * state mutex (room table) -> room mutex; the event queue's mutex and the writer's mutex are
 * leaves.
 */
#ifndef HPBX_MEDIA_ENGINE_H
#define HPBX_MEDIA_ENGINE_H

#include <fcntl.h>
#include <sys/random.h>
#include <sys/timerfd.h>

#include "media_codec.h"

#define ME_TICK_MS 2
#define ME_TICK_NS (ME_TICK_MS * 1000000LL)
#define ME_MIX_TICKS (20 / ME_TICK_MS) /* rooms mix every 20 ms */
#define ME_MAX_SPF 240          /* 30 ms at 8 kHz */
#define ME_PKT 272              /* 12 header + 240 payload, rounded */
#define ME_OUT_SLOTS 4096       /* io_uring sends in flight per worker */
#define ME_EVQ 4096             /* events waiting for Python */
#define ME_JH 256               /* send-lateness histogram: 0.1 ms buckets */
#define ME_REC_SLOTS 8          /* reorder buffer of a recorder (packets) */
#define ME_REC_HOLD 4           /* packets held waiting for a missing one */
#define ME_REC_MAXPAY 480       /* larger payloads are decoded in pieces of this */
#define ME_REC_BUF 8000         /* samples per writer buffer (1 s) */
#define ME_ROOMS 4096
#define ME_ROOM_MAX 64
#define ME_ROOM_FIFO 640        /* samples (80 ms) of room input / output per member */
#define ME_ROOM_TALKERS 3
#define ME_ROOM_TALK_MS (200.0f * 200.0f) /* mean square below which a member is silent */
#define ME_DIGIT_GAP_NS 30000000LL /* a flood: at most one digit per 30 ms per leg */
#define ME_EVENT_TIMEOUT_NS 300000000LL /* an RFC 4733 event without its end */
#define ME_WRITER_MAX_BYTES (64u << 20)

enum { ME_EV_DIGIT = 1, ME_EV_PLAY_DONE, ME_EV_RECORD_DONE, ME_EV_TONE_DONE };
enum { ME_PLAY_END = 0, ME_PLAY_BARGE, ME_PLAY_STOPPED };
enum { ME_REC_DIGIT = 0, ME_REC_SILENCE, ME_REC_MAX, ME_REC_STOPPED, ME_REC_HANGUP, ME_REC_ERROR };
enum { ME_SRC_RFC4733 = 0, ME_SRC_INBAND };

static const char me_event_chars[16] = {'0', '1', '2', '3', '4', '5', '6', '7',
					'8', '9', '*', '#', 'A', 'B', 'C', 'D'};

static inline int me_char_event(char c)
{
	for (int i = 0; i < 16; i++)
		if (me_event_chars[i] == c || (c >= 'a' && c <= 'd' && me_event_chars[i] == c - 32))
			return i;
	return -1;
}

/* ------------------------------------------------------------------ prompts */

typedef struct me_prompt {
	atomic_int refs;
	uint32_t n;         /* samples (8 kHz) */
	uint8_t *enc[3];    /* PCMA, PCMU, G.722: one byte per sample */
} me_prompt;

/* G.722's encoding runs 60 ms past the end (encoded silence), so a last partial frame of any
 * ptime or start offset is completed from the codec's own stream instead of a fixed byte. */
#define ME_G722_TAIL 480

/* Encode 8 kHz s16 once. Returns NULL when out of memory. */
static me_prompt *me_prompt_new(const int16_t *pcm, uint32_t n)
{
	me_codec_init();
	size_t g = ME_NCODECS > 2 ? (size_t)n + ME_G722_TAIL : 0;
	me_prompt *p = malloc(sizeof *p + 2 * (size_t)n + g);
	if (!p)
		return NULL;
	atomic_init(&p->refs, 1);
	p->n = n;
	p->enc[0] = (uint8_t *)(p + 1);
	p->enc[1] = p->enc[0] + n;
	p->enc[2] = g ? p->enc[1] + n : NULL;
	me_encode(ME_PCMA, pcm, p->enc[0], (int)n);
	me_encode(ME_PCMU, pcm, p->enc[1], (int)n);
#ifdef HPBX_G722
	g722_encode_state_t *e = me_g722_enc_new();
	if (!e) {
		free(p);
		return NULL;
	}
	static const int16_t zero[ME_G722_TAIL];
	g722_encode(e, p->enc[2], pcm, (int)n);
	g722_encode(e, p->enc[2] + n, zero, ME_G722_TAIL);
	g722_encode_free(e);
#endif
	return p;
}

static inline void me_prompt_ref(me_prompt *p)
{
	atomic_fetch_add(&p->refs, 1);
}

static inline void me_prompt_unref(me_prompt *p)
{
	if (p && atomic_fetch_sub(&p->refs, 1) == 1)
		free(p);
}

typedef struct {
	uint16_t n;
	me_prompt *p[];
} me_plist;

static void me_plist_free(me_plist *l)
{
	if (!l)
		return;
	for (int i = 0; i < l->n; i++)
		me_prompt_unref(l->p[i]);
	free(l);
}

static me_plist *me_plist_new(int n)
{
	me_plist *l = calloc(1, sizeof *l + (size_t)n * sizeof(me_prompt *));
	if (l)
		l->n = (uint16_t)n;
	return l;
}

/* Item i plays p (the list takes a reference). */
static void me_plist_set(me_plist *l, int i, me_prompt *p)
{
	me_prompt_ref(p);
	l->p[i] = p;
}

/* A player: where in which list. Everything else is in the shared prompts. */
typedef struct {
	me_plist *list;   /* NULL = not playing */
	uint32_t off;     /* sample offset in the current prompt */
	uint16_t item;
	uint16_t barge;   /* RFC 4733 event codes (bit each) that stop it */
	uint8_t loop;
	uint8_t kind;     /* ME_EV_PLAY_DONE or ME_EV_TONE_DONE */
} me_player;

/* ------------------------------------------------------------------ events */

typedef struct {
	uint64_t handle;
	int64_t t_ns;
	uint32_t value;   /* digit: duration ms; record: ms written */
	uint32_t id;      /* record: the recording's id */
	uint8_t kind, leg, reason, source;
	char digit;
} me_event;

/* ------------------------------------------------------------------ recorder */

typedef struct {
	uint32_t ts;
	uint16_t seq, len;
	uint8_t codec, used;
	uint8_t data[ME_REC_MAXPAY];
} me_rslot;

typedef struct me_rec {
	uint32_t id;
	int fd;
	int64_t start_ns;
	int64_t clock_ns;       /* wall time that next_ts corresponds to */
	int64_t gate_ns;        /* audio before this (the beep) is not recorded */
	uint64_t samples, max_samples;
	uint32_t silence_limit, silent_run;
	uint16_t stop_mask;
	uint16_t next_seq;
	uint32_t next_ts;
	uint8_t have_seq, held;
	int16_t *buf;
	int buf_n;
	g722_decode_state_t *g722; /* the recorder's own G.722 decoder (it decodes in seq order) */
	me_rslot slot[ME_REC_SLOTS];
} me_rec;

typedef struct me_job {
	struct me_job *next;
	int fd;
	int16_t *buf;           /* samples to append; NULL with close */
	int n;
	int close;              /* finish the WAV header, close, post the event */
	me_event ev;
	uint64_t samples;
} me_job;

/* ------------------------------------------------------------------ rooms */

typedef struct me_member {
	uint64_t handle;
	g722_encode_state_t *g722; /* a G.722 member's own encoder */
	uint8_t li, codec, muted, talking;
	uint16_t in_n, out_n;
	float energy;
	int16_t in[ME_ROOM_FIFO];
	uint8_t out[ME_ROOM_FIFO];
} me_member;

typedef struct me_room {
	uint32_t id;
	int owner;
	int dying;
	pthread_mutex_t mu;
	int n;
	me_member *m[ME_ROOM_MAX];
	struct me_room *next;   /* the owner worker's list */
	uint64_t mixes;
} me_room;

/* ------------------------------------------------------------------ endpoint */

typedef struct me_ep {
	struct me_ep *next, *prev;  /* the worker's endpoints */
	rl_session *s;
	uint8_t li;
	uint8_t codec, pt, inband;
	int16_t dtmf_pt;            /* -1: none */
	int16_t dtmf_alt;           /* a watcher: the other side's telephone-event type (-1: none) */
	uint8_t watch;              /* a digit watcher of a relayed leg (rl_leg.dw), not an endpoint */
	uint8_t ptks;               /* ptime in ticks */
	uint8_t spurt;              /* the next audio packet starts a talk spurt */
	uint16_t spf;               /* samples per frame */
	uint64_t next_tick;
	uint32_t ts;                /* RTP timestamp of the next slot */
	me_player pl;
	/* RFC 4733 receive */
	uint32_t ev_ssrc, ev_ts;
	int64_t ev_last_ns, last_digit_ns;
	uint16_t ev_dur;
	uint8_t ev_code, ev_pending;
	uint32_t done_ssrc[4], done_ts[4];
	uint8_t done_i;
	g722_encode_state_t *g722e; /* G.722 endpoint: its encoder (in-band digits) */
	g722_decode_state_t *g722d; /*   and decoder (digits, room) */
	me_dtmf_det *ib;            /* in-band detector, when asked */
	int64_t ib_ns;              /* last audio fed to it */
	me_rec *rec;
	me_room *room;
	me_member *mem;
	/* digits to send */
	char dq[32];
	uint8_t dq_n, dq_i;
	uint8_t dt_on, dt_ends, dt_gap;
	uint16_t dt_dur, dt_target;
	uint32_t dt_ts;
	float dt_ph[2];             /* in-band digit oscillators */
	uint64_t sent, rx, dropped_digits;
	struct me_fax *fax;         /* a fax runs on this endpoint (media_fax.h) */
} me_ep;

/* ------------------------------------------------------------------ per worker, per relay */

typedef struct {
	struct msghdr mh;
	struct iovec iov;
	rl_sa to;
	uint8_t buf[ME_PKT];
} me_out;

typedef struct me_worker {
	int tfd;
	int armed;                  /* the timer runs */
	int polled;                 /* io_uring: a poll on tfd is in the kernel */
	uint64_t tick;
	int64_t t0;
	unsigned phase;             /* the next endpoint's slot phase (round robin) */
	me_ep *eps;
	int nep;
	me_room *rooms;
	int nrooms;
	uint64_t late_ticks, missed_slots, late_slots, sent, send_errors, ticks;
	uint64_t jh[ME_JH];
	me_out *out;                /* io_uring send slots */
	int *out_free;
	int nout_free;
} me_worker;

typedef struct me_state {
	pthread_mutex_t mu;         /* the room table */
	me_room *rooms[ME_ROOMS];
	uint16_t room_gen[ME_ROOMS];
	int nrooms;
	unsigned next_owner;
	pthread_mutex_t evmu;
	int efd;
	me_event evq[ME_EVQ];
	int ev_head, ev_len;
	uint64_t ev_dropped;
	/* writer */
	pthread_t wth;
	int wrun, wstop;
	pthread_mutex_t wmu;
	pthread_cond_t wcv;
	me_job *jhead, *jtail;
	size_t jbytes;
	uint64_t write_drops, write_errors;
	atomic_int nrec;
	int max_rec;
	atomic_uint next_rec_id;
	atomic_long nplayers;
} me_state;

/* ------------------------------------------------------------------ events */

static void me_post(me_state *m, const me_event *e)
{
	pthread_mutex_lock(&m->evmu);
	int was_empty = m->ev_len == 0;
	if (m->ev_len == ME_EVQ) {
		m->ev_head = (m->ev_head + 1) % ME_EVQ; /* full: the oldest goes */
		m->ev_len--;
		m->ev_dropped++;
	}
	m->evq[(m->ev_head + m->ev_len) % ME_EVQ] = *e;
	m->ev_len++;
	pthread_mutex_unlock(&m->evmu);
	if (was_empty) {
		uint64_t one = 1;
		if (write(m->efd, &one, sizeof one) < 0) {
			/* the counter is full: Python is already due to drain */
		}
	}
}

static void me_post_ep(rl_relay *r, me_ep *ep, int kind, int reason, char digit, int source, uint32_t value,
		       uint32_t id)
{
	me_event e;
	memset(&e, 0, sizeof e);
	e.handle = rl_handle_of(r, ep->s);
	e.t_ns = rl_now();
	e.kind = (uint8_t)kind;
	e.leg = ep->li;
	e.reason = (uint8_t)reason;
	e.digit = digit;
	e.source = (uint8_t)source;
	e.value = value;
	e.id = id;
	me_post(r->media, &e);
}

/* Python: take up to max events. */
static int me_events_take(rl_relay *r, me_event *out, int max)
{
	me_state *m = r->media;
	if (!m)
		return 0;
	uint64_t v;
	if (read(m->efd, &v, sizeof v) < 0) {
		/* EAGAIN: nothing new was signalled; the queue may still hold events */
	}
	pthread_mutex_lock(&m->evmu);
	int n = 0;
	while (n < max && m->ev_len) {
		out[n++] = m->evq[m->ev_head];
		m->ev_head = (m->ev_head + 1) % ME_EVQ;
		m->ev_len--;
	}
	int more = m->ev_len;
	pthread_mutex_unlock(&m->evmu);
	if (more) {
		uint64_t one = 1;
		if (write(m->efd, &one, sizeof one) < 0) {
			/* already signalled */
		}
	}
	return n;
}

/* ------------------------------------------------------------------ writer thread */

static void me_wav_header(uint8_t *h, uint32_t data_bytes)
{
	memcpy(h, "RIFF", 4);
	uint32_t v = 36 + data_bytes;
	memcpy(h + 4, &v, 4);
	memcpy(h + 8, "WAVEfmt ", 8);
	v = 16;
	memcpy(h + 16, &v, 4);
	uint16_t s = 1;
	memcpy(h + 20, &s, 2); /* PCM */
	memcpy(h + 22, &s, 2); /* mono */
	v = 8000;
	memcpy(h + 24, &v, 4);
	v = 16000;
	memcpy(h + 28, &v, 4);
	s = 2;
	memcpy(h + 32, &s, 2);
	s = 16;
	memcpy(h + 34, &s, 2);
	memcpy(h + 36, "data", 4);
	memcpy(h + 40, &data_bytes, 4);
}

static void *me_writer_main(void *arg)
{
	me_state *m = arg;
	pthread_mutex_lock(&m->wmu);
	for (;;) {
		while (!m->jhead && !m->wstop)
			pthread_cond_wait(&m->wcv, &m->wmu);
		me_job *j = m->jhead;
		if (!j)
			break; /* stop, and everything written */
		m->jhead = j->next;
		if (!m->jhead)
			m->jtail = NULL;
		if (j->buf)
			m->jbytes -= (size_t)j->n * 2;
		pthread_mutex_unlock(&m->wmu);
		if (j->buf) {
			size_t want = (size_t)j->n * 2, done = 0;
			while (done < want) {
				ssize_t w = write(j->fd, (uint8_t *)j->buf + done, want - done);
				if (w < 0 && errno == EINTR)
					continue;
				if (w <= 0) {
					m->write_errors++;
					break;
				}
				done += (size_t)w;
			}
			free(j->buf);
		}
		if (j->close) {
			uint8_t h[44];
			uint64_t bytes = j->samples * 2;
			me_wav_header(h, bytes > 0xFFFFFFD0u ? 0xFFFFFFD0u : (uint32_t)bytes);
			if (pwrite(j->fd, h, sizeof h, 0) != (ssize_t)sizeof h)
				m->write_errors++;
			close(j->fd);
			atomic_fetch_sub(&m->nrec, 1);
			me_post(m, &j->ev);
		}
		free(j);
		pthread_mutex_lock(&m->wmu);
	}
	pthread_mutex_unlock(&m->wmu);
	return NULL;
}

static void me_job_push(me_state *m, me_job *j)
{
	pthread_mutex_lock(&m->wmu);
	if (j->buf && !j->close && m->jbytes + (size_t)j->n * 2 > ME_WRITER_MAX_BYTES) {
		/* the disk cannot keep up: drop audio rather than grow without bound */
		m->write_drops++;
		pthread_mutex_unlock(&m->wmu);
		free(j->buf);
		free(j);
		return;
	}
	if (j->buf)
		m->jbytes += (size_t)j->n * 2;
	j->next = NULL;
	if (m->jtail)
		m->jtail->next = j;
	else
		m->jhead = j;
	m->jtail = j;
	pthread_cond_signal(&m->wcv);
	pthread_mutex_unlock(&m->wmu);
}

/* ------------------------------------------------------------------ recorder */

static void me_rec_stop(rl_relay *r, me_ep *ep, int reason, char digit);

static void me_rec_flush(me_state *m, me_rec *rc)
{
	if (!rc->buf_n)
		return;
	me_job *j = calloc(1, sizeof *j);
	if (!j) {
		m->write_drops++;
		rc->buf_n = 0;
		return;
	}
	j->fd = rc->fd;
	j->buf = rc->buf;
	j->n = rc->buf_n;
	rc->buf = NULL;
	rc->buf_n = 0;
	me_job_push(m, j);
}

/* Append samples (NULL = silence); stops the recording at its limits. Returns 0 when stopped. */
static int me_rec_write(rl_relay *r, me_ep *ep, const int16_t *x, uint32_t n)
{
	me_rec *rc = ep->rec;
	int stop = -1;
	if (rc->samples + n >= rc->max_samples) {
		n = (uint32_t)(rc->max_samples - rc->samples);
		stop = ME_REC_MAX;
	}
	uint32_t done = 0;
	while (done < n) {
		if (!rc->buf) {
			rc->buf = malloc(ME_REC_BUF * sizeof(int16_t));
			if (!rc->buf) {
				stop = ME_REC_ERROR;
				break;
			}
			rc->buf_n = 0;
		}
		uint32_t room = ME_REC_BUF - (uint32_t)rc->buf_n, k = n - done < room ? n - done : room;
		if (x)
			memcpy(rc->buf + rc->buf_n, x + done, k * sizeof(int16_t));
		else
			memset(rc->buf + rc->buf_n, 0, k * sizeof(int16_t));
		rc->buf_n += (int)k;
		done += k;
		if (rc->buf_n == ME_REC_BUF)
			me_rec_flush(r->media, rc);
	}
	rc->samples += done;
	if (rc->silence_limit && stop < 0) {
		float ms = x ? me_mean_square(x, (int)n) : 0;
		rc->silent_run = ms < ME_ROOM_TALK_MS ? rc->silent_run + n : 0;
		if (rc->silent_run >= rc->silence_limit)
			stop = ME_REC_SILENCE;
	}
	if (stop >= 0) {
		me_rec_stop(r, ep, stop, 0);
		return 0;
	}
	return 1;
}

/* Write one packet in order: fill the RTP-time gap before it with silence first. */
static int me_rec_play(rl_relay *r, me_ep *ep, me_rslot *sl, int64_t now)
{
	me_rec *rc = ep->rec;
	int32_t gap = (int32_t)(sl->ts - rc->next_ts);
	if (gap > 0) {
		/* a timestamp jump is believed only as far as the wall clock allows */
		int64_t wall = (now - rc->clock_ns) / 125000 + 8000;
		if (wall < 0)
			wall = 0;
		uint32_t g = (uint32_t)gap > (uint64_t)wall ? (uint32_t)wall : (uint32_t)gap;
		if (g && !me_rec_write(r, ep, NULL, g))
			return 0;
	}
	int16_t pcm[ME_REC_MAXPAY];
#ifdef HPBX_G722
	if (sl->codec == ME_G722) {
		if (!rc->g722)
			rc->g722 = me_g722_dec_new();
		if (rc->g722)
			g722_decode(rc->g722, pcm, sl->data, sl->len);
		else
			memset(pcm, 0, sizeof pcm);
	} else
#endif
		me_decode(sl->codec, sl->data, pcm, sl->len);
	rc->next_ts = sl->ts + sl->len;
	rc->clock_ns = now;
	return me_rec_write(r, ep, pcm, sl->len);
}

/* Play out what is in order; with force (or too many held) skip over missing packets. */
static int me_rec_drain(rl_relay *r, me_ep *ep, int force, int64_t now)
{
	me_rec *rc = ep->rec;
	while (rc && rc->held) {
		me_rslot *sl = &rc->slot[rc->next_seq % ME_REC_SLOTS];
		if (sl->used && sl->seq == rc->next_seq) {
			sl->used = 0;
			rc->held--;
			rc->next_seq++;
			if (!me_rec_play(r, ep, sl, now))
				return 0;
			rc = ep->rec;
			continue;
		}
		if (!force && rc->held < ME_REC_HOLD)
			break;
		rc->next_seq++; /* lost: the gap is filled from the next packet's timestamp */
	}
	return ep->rec != NULL;
}

static void me_rec_rx(rl_relay *r, me_ep *ep, uint16_t seq, uint32_t ts, int codec, const uint8_t *pay,
		      int plen, int64_t now)
{
	me_rec *rc = ep->rec;
	if (now < rc->gate_ns)
		return;
	if (!rc->have_seq) {
		rc->have_seq = 1;
		rc->next_seq = seq;
		rc->next_ts = ts;
		/* silence already filled by the clock (nothing arrived yet) stays */
	}
	int16_t d = (int16_t)(seq - rc->next_seq);
	if (d < -4 * ME_REC_SLOTS) {
		/* far behind: the sender restarted its sequence; follow it from here */
		if (!me_rec_drain(r, ep, 1, now))
			return;
		rc->next_seq = seq;
		rc->next_ts = ts;
		d = 0;
	}
	if (d < 0)
		return; /* late or duplicate: its time was already filled */
	if (d >= ME_REC_SLOTS) {
		/* far ahead: play out everything held, then continue from here */
		if (!me_rec_drain(r, ep, 1, now))
			return;
		rc->next_seq = seq;
	}
	/* a huge packet is split into slots of consecutive timestamps would need more room: keep
	 * its first ME_REC_MAXPAY samples and let the next packet's timestamp fill the rest */
	if (plen > ME_REC_MAXPAY)
		plen = ME_REC_MAXPAY;
	me_rslot *sl = &rc->slot[seq % ME_REC_SLOTS];
	if (sl->used)
		return; /* duplicate */
	sl->used = 1;
	sl->seq = seq;
	sl->ts = ts;
	sl->len = (uint16_t)plen;
	sl->codec = (uint8_t)codec;
	memcpy(sl->data, pay, (size_t)plen);
	rc->held++;
	me_rec_drain(r, ep, 0, now);
}

/* The clock's share: nothing arriving still counts as time (silence) once 200 ms overdue. */
static void me_rec_tick(rl_relay *r, me_ep *ep, int64_t now)
{
	me_rec *rc = ep->rec;
	if (now < rc->gate_ns)
		return;
	if (rc->clock_ns < rc->gate_ns)
		rc->clock_ns = rc->gate_ns;
	if (now - rc->clock_ns < 200000000LL)
		return;
	if (!me_rec_drain(r, ep, 1, now))
		return;
	rc = ep->rec;
	int64_t n = (now - rc->clock_ns) / 125000;
	if (n <= 0)
		return;
	rc->next_ts += (uint32_t)n;
	rc->clock_ns += n * 125000;
	me_rec_write(r, ep, NULL, (uint32_t)n);
}

static void me_rec_stop(rl_relay *r, me_ep *ep, int reason, char digit)
{
	me_rec *rc = ep->rec;
	if (!rc)
		return;
	ep->rec = NULL; /* first: writes below cannot stop it twice */
	me_state *m = r->media;
	me_rec_flush(m, rc);
	me_job *j = calloc(1, sizeof *j);
	if (!j) {
		/* cannot even queue the close: finish it here */
		close(rc->fd);
		atomic_fetch_sub(&m->nrec, 1);
	} else {
		j->fd = rc->fd;
		j->close = 1;
		j->samples = rc->samples;
		j->ev.handle = rl_handle_of(r, ep->s);
		j->ev.t_ns = rl_now();
		j->ev.kind = ME_EV_RECORD_DONE;
		j->ev.leg = ep->li;
		j->ev.reason = (uint8_t)reason;
		j->ev.digit = digit;
		j->ev.value = (uint32_t)(rc->samples / 8);
		j->ev.id = rc->id;
		me_job_push(m, j);
	}
	free(rc->buf);
#ifdef HPBX_G722
	if (rc->g722)
		g722_decode_free(rc->g722);
#endif
	free(rc);
}

/* ------------------------------------------------------------------ rooms */

static void me_room_in(me_member *mb, const int16_t *x, int n)
{
	if (n > ME_ROOM_FIFO)
		x += n - ME_ROOM_FIFO, n = ME_ROOM_FIFO;
	if (mb->in_n + n > ME_ROOM_FIFO) {
		int drop = mb->in_n + n - ME_ROOM_FIFO;
		memmove(mb->in, mb->in + drop, (size_t)(mb->in_n - drop) * sizeof(int16_t));
		mb->in_n = (uint16_t)(mb->in_n - drop);
	}
	memcpy(mb->in + mb->in_n, x, (size_t)n * sizeof(int16_t));
	mb->in_n = (uint16_t)(mb->in_n + n);
}

static void me_room_out(me_member *mb, const uint8_t *x, int n)
{
	if (mb->out_n + n > ME_ROOM_FIFO) {
		int drop = mb->out_n + n - ME_ROOM_FIFO;
		memmove(mb->out, mb->out + drop, (size_t)(mb->out_n - drop));
		mb->out_n = (uint16_t)(mb->out_n - drop);
	}
	memcpy(mb->out + mb->out_n, x, (size_t)n);
	mb->out_n = (uint16_t)(mb->out_n + n);
}

static inline int16_t me_sat(int32_t v)
{
	return v > 32767 ? 32767 : v < -32768 ? -32768 : (int16_t)v;
}

/*
 * One 20 ms mix (under the room's mutex): each member hears the sum of the loudest
 * ME_ROOM_TALKERS others. Members that are not talking share one encoded frame per codec.
 */
static void me_room_mix(me_room *rm)
{
	int16_t frame[ME_ROOM_MAX][160];
	int32_t sum[160];
	int talk[ME_ROOM_TALKERS], nt = 0;
	for (int i = 0; i < rm->n; i++) {
		me_member *mb = rm->m[i];
		if (mb->in_n > 320) { /* more than 40 ms queued: drop the oldest, keep the delay low */
			int drop = mb->in_n - 320;
			memmove(mb->in, mb->in + drop, (size_t)(mb->in_n - drop) * sizeof(int16_t));
			mb->in_n = (uint16_t)(mb->in_n - drop);
		}
		int k = mb->in_n < 160 ? mb->in_n : 160;
		memcpy(frame[i], mb->in, (size_t)k * sizeof(int16_t));
		memset(frame[i] + k, 0, (size_t)(160 - k) * sizeof(int16_t));
		memmove(mb->in, mb->in + k, (size_t)(mb->in_n - k) * sizeof(int16_t));
		mb->in_n = (uint16_t)(mb->in_n - k);
		mb->energy = mb->muted ? 0 : me_mean_square(frame[i], 160);
		mb->talking = 0;
		if (mb->energy < ME_ROOM_TALK_MS)
			continue;
		/* keep the loudest few */
		if (nt < ME_ROOM_TALKERS) {
			talk[nt++] = i;
		} else {
			int q = 0;
			for (int t = 1; t < nt; t++)
				if (rm->m[talk[t]]->energy < rm->m[talk[q]]->energy)
					q = t;
			if (mb->energy > rm->m[talk[q]]->energy)
				talk[q] = i;
		}
	}
	memset(sum, 0, sizeof sum);
	for (int t = 0; t < nt; t++) {
		rm->m[talk[t]]->talking = 1;
		for (int j = 0; j < 160; j++)
			sum[j] += frame[talk[t]][j];
	}
	uint8_t shared[2][160];
	int have_shared[2] = {0, 0}; /* PCMA, PCMU */
	for (int i = 0; i < rm->n; i++) {
		me_member *mb = rm->m[i];
		uint8_t enc[160];
		if (mb->talking || mb->codec == ME_G722) {
			int16_t own[160];
			for (int j = 0; j < 160; j++)
				own[j] = me_sat(sum[j] - (mb->talking ? frame[i][j] : 0));
#ifdef HPBX_G722
			if (mb->codec == ME_G722) {
				/* adaptive: no frame can be shared, each G.722 member has its own encoder */
				if (mb->g722)
					g722_encode(mb->g722, enc, own, 160);
				else
					memset(enc, 0xFF, sizeof enc);
			} else
#endif
				me_encode(mb->codec, own, enc, 160);
			me_room_out(mb, enc, 160);
			continue;
		}
		int c = mb->codec;
		if (!have_shared[c]) {
			int16_t all[160];
			for (int j = 0; j < 160; j++)
				all[j] = me_sat(sum[j]);
			me_encode(c, all, shared[c], 160);
			have_shared[c] = 1;
		}
		me_room_out(mb, shared[c], 160);
	}
	rm->mixes++;
}

/* ------------------------------------------------------------------ sending */

static void me_write_rtp(uint8_t *b, int marker, int pt, uint16_t seq, uint32_t ts, uint32_t ssrc)
{
	b[0] = 0x80;
	b[1] = (uint8_t)((marker ? 0x80 : 0) | (pt & 0x7f));
	b[2] = (uint8_t)(seq >> 8);
	b[3] = (uint8_t)seq;
	me_wr32(b + 4, ts);
	me_wr32(b + 8, ssrc);
}

/* Send one packet (header and payload already in buf) from the endpoint's leg. */
static void me_send(rl_relay *r, rl_worker *w, me_ep *ep, const uint8_t *buf, int len)
{
	me_worker *mw = w->mw;
	rl_leg *l = &ep->s->leg[ep->li];
	const rl_sa *to = &l->peer[0];
	if (!to->sa.sa_family) {
		l->st.dropped_nopeer++;
		return;
	}
	ep->sent++;
	mw->sent++;
	if (r->uring && mw->nout_free) {
		rl_uring *u = w->u;
		struct io_uring_sqe *sqe = rlu_sqe(u);
		if (sqe) {
			int slot = mw->out_free[--mw->nout_free];
			me_out *o = &mw->out[slot];
			memcpy(o->buf, buf, (size_t)len);
			o->to = *to;
			o->iov.iov_base = o->buf;
			o->iov.iov_len = (size_t)len;
			memset(&o->mh, 0, sizeof o->mh);
			o->mh.msg_name = &o->to;
			o->mh.msg_namelen = rl_sa_len(to);
			o->mh.msg_iov = &o->iov;
			o->mh.msg_iovlen = 1;
			sqe->opcode = IORING_OP_SENDMSG;
			sqe->fd = l->fd[0];
			sqe->addr = (uint64_t)(uintptr_t)&o->mh;
			sqe->len = 1;
			sqe->msg_flags = MSG_DONTWAIT;
			sqe->user_data = RLU_UD(RLU_SEND, RLU_NBUF + (unsigned)slot);
			u->outstanding++;
			return;
		}
	}
	if (sendto(l->fd[0], buf, (size_t)len, MSG_DONTWAIT, &to->sa, rl_sa_len(to)) < 0) {
		l->st.send_errors++;
		mw->send_errors++;
	}
}

/* io_uring: a media send completed (slot = user_data value - RLU_NBUF). */
static void me_uring_sent(rl_worker *w, unsigned slot, int res)
{
	me_worker *mw = w->mw;
	w->u->outstanding--;
	if (!mw || slot >= ME_OUT_SLOTS)
		return;
	if (res < 0)
		mw->send_errors++;
	mw->out_free[mw->nout_free++] = (int)slot;
}

/* Next RTP header of the leg's identity; the endpoint's slot clock gives the timestamp. */
static inline uint8_t *me_hdr(me_ep *ep, uint8_t *b, int marker, int pt, uint32_t ts, int64_t now)
{
	me_txid *t = &ep->s->leg[ep->li].tx;
	t->seq++;
	t->ts = ts;
	t->ns = now;
	t->dur = ep->spf;
	me_write_rtp(b, marker, pt, t->seq, ts, t->ssrc);
	return b + 12;
}

static void me_play_end(rl_relay *r, me_ep *ep, int reason)
{
	if (!ep->pl.list)
		return;
	int kind = ep->pl.kind;
	me_plist_free(ep->pl.list);
	ep->pl.list = NULL;
	atomic_fetch_sub(&r->media->nplayers, 1);
	me_post_ep(r, ep, kind, reason, 0, 0, 0, 0);
}

/* One frame of the current prompt into pay; returns the marker bit (a prompt starts). */
static int me_play_frame(rl_relay *r, me_ep *ep, uint8_t *pay, int *done)
{
	me_player *pl = &ep->pl;
	me_prompt *p = pl->list->p[pl->item];
	int marker = pl->off == 0;
	uint32_t left = p->n - pl->off, k = left < ep->spf ? left : ep->spf;
	if (ep->codec == ME_G722)
		k = ep->spf; /* the G.722 encoding runs on into encoded silence (ME_G722_TAIL) */
	memcpy(pay, p->enc[ep->codec] + pl->off, k);
	if (k < ep->spf)
		memset(pay + k, me_silence_byte(ep->codec), ep->spf - k);
	if (k > left)
		k = left;
	pl->off += k;
	*done = 0;
	if (pl->off >= p->n) {
		pl->off = 0;
		if (++pl->item >= pl->list->n) {
			if (pl->loop)
				pl->item = 0;
			else
				*done = 1;
		}
	}
	(void)r;
	return marker;
}

/* Digits to send: RFC 4733 (dtmf_pt) or in-band tones. Returns 1 when it used the slot. */
static int me_dtmf_slot(me_ep *ep, uint8_t *b, int *len, int64_t now)
{
	static const float row[4] = {697, 770, 852, 941}, col[4] = {1209, 1336, 1477, 1633};
	if (!ep->dt_on) {
		if (ep->dt_gap) {
			ep->dt_gap--;
			return 0;
		}
		if (ep->dq_i >= ep->dq_n)
			return 0;
		ep->dt_on = 1;
		ep->dt_dur = 0;
		ep->dt_ends = 0;
		ep->dt_ts = ep->ts;
		ep->dt_ph[0] = ep->dt_ph[1] = 0;
	}
	int code = me_char_event(ep->dq[ep->dq_i]);
	if (code < 0)
		goto next;
	if (ep->dtmf_pt >= 0) {
		int first = ep->dt_dur == 0 && ep->dt_ends == 0;
		if (ep->dt_dur < ep->dt_target)
			ep->dt_dur = (uint16_t)(ep->dt_dur + ep->spf);
		int end = ep->dt_dur >= ep->dt_target;
		uint8_t *p = me_hdr(ep, b, first, ep->dtmf_pt, ep->dt_ts, now);
		p[0] = (uint8_t)code;
		p[1] = (uint8_t)((end ? 0x80 : 0) | 10); /* volume -10 dBm0 */
		p[2] = (uint8_t)(ep->dt_dur >> 8);
		p[3] = (uint8_t)ep->dt_dur;
		*len = 16;
		if (end && ++ep->dt_ends >= 3)
			goto next;
		return 1;
	}
	/* in-band: -7 dBm0 per tone (amplitude ~10170), then a 60 ms pause */
	{
		int ri = -1, ci = -1;
		for (int i = 0; i < 16; i++)
			if (me_dtmf_chars[i] == me_event_chars[code])
				ri = i / 4, ci = i % 4;
		int16_t pcm[ME_MAX_SPF];
		float w0 = 2.0f * (float)M_PI * row[ri] / 8000.0f, w1 = 2.0f * (float)M_PI * col[ci] / 8000.0f;
		for (int j = 0; j < ep->spf; j++) {
			pcm[j] = (int16_t)(10170.0f * (sinf(ep->dt_ph[0]) + sinf(ep->dt_ph[1])));
			ep->dt_ph[0] += w0;
			ep->dt_ph[1] += w1;
		}
		ep->dt_ph[0] = fmodf(ep->dt_ph[0], 2.0f * (float)M_PI);
		ep->dt_ph[1] = fmodf(ep->dt_ph[1], 2.0f * (float)M_PI);
		uint8_t *p = me_hdr(ep, b, ep->dt_dur == 0, ep->pt, ep->ts, now);
#ifdef HPBX_G722
		if (ep->codec == ME_G722) {
			if (!ep->g722e)
				ep->g722e = me_g722_enc_new();
			if (ep->g722e)
				g722_encode(ep->g722e, p, pcm, ep->spf);
		} else
#endif
			me_encode(ep->codec, pcm, p, ep->spf);
		*len = 12 + ep->spf;
		ep->dt_dur = (uint16_t)(ep->dt_dur + ep->spf);
		if (ep->dt_dur >= ep->dt_target)
			goto next;
		return 1;
	}
next:
	ep->dt_on = 0;
	ep->dq_i++;
	ep->dt_gap = (uint8_t)((60 + ep->ptks * ME_TICK_MS - 1) / (ep->ptks * ME_TICK_MS)); /* >= 60 ms */
	ep->spurt = 1;
	return 1;
}

#include "media_fax.h"

/* One slot of an endpoint: produce at most one packet. */
static void me_ep_slot(rl_relay *r, rl_worker *w, me_ep *ep, int64_t now)
{
	uint8_t b[ME_PKT];
	int len = 0;
	if (ep->fax && me_fax_slot(r, w, ep, now)) {
		/* the fax modem owns the leg's audio */
	} else if (me_dtmf_slot(ep, b, &len, now)) {
		me_send(r, w, ep, b, len);
	} else if (ep->pl.list) {
		int done;
		uint8_t pay[ME_MAX_SPF];
		int marker = me_play_frame(r, ep, pay, &done) || ep->spurt;
		uint8_t *p = me_hdr(ep, b, marker, ep->pt, ep->ts, now);
		memcpy(p, pay, ep->spf);
		me_send(r, w, ep, b, 12 + ep->spf);
		ep->spurt = 0;
		if (done)
			me_play_end(r, ep, ME_PLAY_END);
	} else if (ep->mem) {
		me_room *rm = ep->room;
		pthread_mutex_lock(&rm->mu);
		me_member *mb = ep->mem;
		int have = mb->out_n >= ep->spf;
		if (have) {
			memcpy(b + 12, mb->out, ep->spf);
			memmove(mb->out, mb->out + ep->spf, (size_t)(mb->out_n - ep->spf));
			mb->out_n = (uint16_t)(mb->out_n - ep->spf);
		}
		pthread_mutex_unlock(&rm->mu);
		if (have) {
			me_hdr(ep, b, ep->spurt, ep->pt, ep->ts, now);
			me_send(r, w, ep, b, 12 + ep->spf);
			ep->spurt = 0;
		} else {
			ep->spurt = 1;
		}
	} else {
		ep->spurt = 1; /* silence: the next packet starts a talk spurt */
	}
	ep->ts += ep->spf;
}

/* ------------------------------------------------------------------ digits heard */

static void me_digit_start(rl_relay *r, me_ep *ep, int code)
{
	if (ep->pl.list && (ep->pl.barge & (1u << code)))
		me_play_end(r, ep, ME_PLAY_BARGE);
	if (ep->rec && (ep->rec->stop_mask & (1u << code)))
		me_rec_stop(r, ep, ME_REC_DIGIT, me_event_chars[code]);
}

static void me_digit_end(rl_relay *r, me_ep *ep, int code, int source, uint32_t ms, int64_t now)
{
	if (now - ep->last_digit_ns < ME_DIGIT_GAP_NS) {
		ep->dropped_digits++;
		return;
	}
	ep->last_digit_ns = now;
	/* reason 1: heard on a relayed leg (a watcher), so Python hands it to the leg's listener */
	me_post_ep(r, ep, ME_EV_DIGIT, ep->watch, me_event_chars[code], source, ms, 0);
}

typedef struct {
	rl_relay *r;
	me_ep *ep;
	int64_t now;
} me_ib_ctx;

static void me_ib_started(void *c, int code)
{
	me_ib_ctx *x = c;
	me_digit_start(x->r, x->ep, me_char_event(me_dtmf_chars[code]));
}

static void me_ib_ended(void *c, int code, int ms)
{
	me_ib_ctx *x = c;
	me_digit_end(x->r, x->ep, me_char_event(me_dtmf_chars[code]), ME_SRC_INBAND, (uint32_t)ms, x->now);
}

static void me_rfc_emit(rl_relay *r, me_ep *ep, int64_t now)
{
	ep->ev_pending = 0;
	ep->done_ssrc[ep->done_i] = ep->ev_ssrc;
	ep->done_ts[ep->done_i] = ep->ev_ts;
	ep->done_i = (uint8_t)((ep->done_i + 1) & 3);
	me_digit_end(r, ep, ep->ev_code, ME_SRC_RFC4733, ep->ev_dur / 8, now);
}

/* RFC 4733: one digit per (SSRC, timestamp), whatever repeats or goes missing. */
static void me_rfc_rx(rl_relay *r, me_ep *ep, uint32_t ssrc, uint32_t ts, const uint8_t *pay, int plen,
		      int64_t now)
{
	if (plen < 4)
		return;
	int code = pay[0], end = pay[1] & 0x80;
	uint16_t dur = (uint16_t)((pay[2] << 8) | pay[3]);
	if (code > 15)
		return; /* not a DTMF digit (flash, tones): ignored */
	for (int i = 0; i < 4; i++)
		if (ep->done_ts[i] == ts && ep->done_ssrc[i] == ssrc && (ep->done_ts[i] | ep->done_ssrc[i]))
			return; /* an end retransmission or a late packet of a digit already reported */
	if (ep->ev_pending && (ep->ev_ssrc != ssrc || ep->ev_ts != ts))
		me_rfc_emit(r, ep, now); /* a new event: the previous one lost its end */
	if (!ep->ev_pending) {
		ep->ev_pending = 1;
		ep->ev_ssrc = ssrc;
		ep->ev_ts = ts;
		ep->ev_code = (uint8_t)code;
		ep->ev_dur = 0;
		me_digit_start(r, ep, code);
	}
	if (dur > ep->ev_dur)
		ep->ev_dur = dur;
	ep->ev_last_ns = now;
	if (end)
		me_rfc_emit(r, ep, now);
}

/*
 * A packet arrived on a terminated leg (after latching and counting). Garbage is dropped; a
 * packet's work is bounded by its size (at most RL_MAXPKT samples).
 */
static int me_ep_in(rl_relay *r, me_ep *ep, const uint8_t *p, size_t len, int64_t now)
{
	if (ep && ep->fax && ep->fax->is_t38) {
		/* T.38: the leg carries UDPTL now (media_fax.h) */
		ep->rx++;
		me_t38_rx(ep->fax, p, (int)len);
		return 1;
	}
	if (!ep || len < 12 || (p[0] >> 6) != 2)
		return 0;
	size_t hl = 12 + 4 * (size_t)(p[0] & 15);
	if ((p[0] & 0x10) && len >= hl + 4)
		hl += 4 + 4 * (size_t)((p[hl + 2] << 8) | p[hl + 3]);
	size_t pad = (p[0] & 0x20) ? p[len - 1] : 0;
	if (hl + pad >= len)
		return 0;
	const uint8_t *pay = p + hl;
	int plen = (int)(len - hl - pad);
	int pt = p[1] & 0x7f;
	uint16_t seq = (uint16_t)((p[2] << 8) | p[3]);
	uint32_t ts = me_rd32(p + 4), ssrc = me_rd32(p + 8);
	ep->rx++;
	if (pt == ep->dtmf_pt || (ep->dtmf_alt >= 0 && pt == ep->dtmf_alt)) {
		me_rfc_rx(r, ep, ssrc, ts, pay, plen, now);
		return 1;
	}
	if (ep->watch && !ep->ib)
		return 1; /* a watcher without in-band detection looks at nothing else */
	int codec = pt == ep->pt ? ep->codec : pt == 8 ? ME_PCMA : pt == 0 ? ME_PCMU : -1;
#ifndef HPBX_G722
	if (codec == ME_G722)
		codec = -1;
#endif
	if (codec < 0)
		return 1;
	if (ep->fax) {
		me_fax_rx(r, ep, seq, ts, codec, pay, plen, now);
		return 1;
	}
	if (ep->rec)
		me_rec_rx(r, ep, seq, ts, codec, pay, plen, now);
	if (ep->ib || ep->mem) {
		int16_t pcm[RL_MAXPKT];
#ifdef HPBX_G722
		if (codec == ME_G722) {
			if (!ep->g722d)
				ep->g722d = me_g722_dec_new();
			if (!ep->g722d)
				return 1;
			plen = g722_decode(ep->g722d, pcm, pay, plen);
		} else
#endif
			me_decode(codec, pay, pcm, plen);
		if (ep->ib) {
			me_ib_ctx c = {r, ep, now};
			ep->ib_ns = now;
			me_dtmf_feed(ep->ib, pcm, plen, me_ib_started, me_ib_ended, &c);
		}
		if (ep->mem && ep->room) {
			pthread_mutex_lock(&ep->room->mu);
			me_room_in(ep->mem, pcm, plen);
			pthread_mutex_unlock(&ep->room->mu);
		}
	}
	return 1;
}

static int me_rx(void *relay, void *session, int li, const uint8_t *p, size_t len, int64_t now)
{
	rl_session *s = session;
	return me_ep_in(relay, s->leg[li].ep, p, len, now);
}

/*
 * A relayed leg whose digits are watched (rl_leg.dw): the packet is looked at here and then
 * relayed unchanged by the caller (rl_route). A watcher is an me_ep that is not on the
 * worker's endpoint list (it sends nothing and has no clock), so the timeouts the clock
 * applies to an endpoint (an RFC 4733 event whose end was lost, in-band audio that stopped
 * inside a digit) are applied here, when the leg's next packet arrives (every ptime while
 * the phone talks).
 */
static void me_watch_rx(void *relay, void *session, int li, const uint8_t *p, size_t len, int64_t now)
{
	rl_relay *r = relay;
	rl_session *s = session;
	me_ep *ep = s->leg[li].dw;
	if (ep->ev_pending && now - ep->ev_last_ns > ME_EVENT_TIMEOUT_NS)
		me_rfc_emit(r, ep, now);
	if (ep->ib && ep->ib->in_digit >= 0 && now - ep->ib_ns > 100000000LL) {
		int code = ep->ib->in_digit;
		ep->ib->in_digit = -1;
		ep->ib->last_hit = -1;
		me_digit_end(r, ep, me_char_event(me_dtmf_chars[code]), ME_SRC_INBAND,
			     (uint32_t)(ep->ib->blocks * ME_DTMF_N / 8), now);
	}
	me_ep_in(r, ep, p, len, now);
}

/*
 * A leg switching between a watcher and an endpoint hands its RFC 4733 receive state over, so
 * a digit is reported once: the end retransmissions of a digit the endpoint already reported
 * (or a digit still held) reach the watcher after bridge, and the reverse after terminate.
 */
static void me_rfc_handover(me_ep *to, const me_ep *from)
{
	memcpy(to->done_ssrc, from->done_ssrc, sizeof to->done_ssrc);
	memcpy(to->done_ts, from->done_ts, sizeof to->done_ts);
	to->done_i = from->done_i;
	to->ev_ssrc = from->ev_ssrc;
	to->ev_ts = from->ev_ts;
	to->ev_last_ns = from->ev_last_ns;
	to->ev_dur = from->ev_dur;
	to->ev_code = from->ev_code;
	to->ev_pending = from->ev_pending;
	to->last_digit_ns = from->last_digit_ns;
}

static void me_watch_free(rl_leg *l)
{
	me_ep *ep = l->dw;
	if (!ep)
		return;
	l->dw = NULL;
	free(ep->ib);
#ifdef HPBX_G722
	if (ep->g722d)
		g722_decode_free(ep->g722d);
#endif
	free(ep);
}

/* ------------------------------------------------------------------ the clock */

static void me_timer_set(me_worker *mw, int on)
{
	struct itimerspec it;
	memset(&it, 0, sizeof it);
	if (on) {
		int64_t now = rl_now();
		mw->t0 = (now / ME_TICK_NS + 1) * ME_TICK_NS;
		mw->tick = 0;
		int64_t first = mw->t0 + ME_TICK_NS;
		it.it_value.tv_sec = first / 1000000000LL;
		it.it_value.tv_nsec = first % 1000000000LL;
		it.it_interval.tv_nsec = ME_TICK_NS;
	}
	timerfd_settime(mw->tfd, on ? TFD_TIMER_ABSTIME : 0, &it, NULL);
	mw->armed = on;
}

/* After an endpoint or room came or went (worker mutex held). */
static void me_worker_load(me_worker *mw)
{
	int want = mw->nep + mw->nrooms > 0;
	if (want != mw->armed)
		me_timer_set(mw, want);
}

/* A tick: every endpoint whose slot is due sends (at most) one packet; rooms mix every 20 ms. */
static void me_tick(rl_relay *r, rl_worker *w)
{
	me_worker *mw = w->mw;
	if (!mw)
		return;
	uint64_t exp = 0;
	if (read(mw->tfd, &exp, sizeof exp) != (ssize_t)sizeof exp || !exp || !mw->armed)
		return;
	mw->ticks++;
	mw->late_ticks += exp - 1;
	uint64_t prev = mw->tick;
	mw->tick += exp;
	int64_t now = rl_now();
	/* rooms first: their frames are sent by the members' slots of this tick */
	for (me_room *rm = mw->rooms; rm; rm = rm->next) {
		uint64_t mixes = mw->tick / ME_MIX_TICKS - prev / ME_MIX_TICKS;
		if (mixes > 2)
			mixes = 2;
		pthread_mutex_lock(&rm->mu);
		while (mixes--)
			me_room_mix(rm);
		pthread_mutex_unlock(&rm->mu);
	}
	uint64_t sent0 = mw->sent;
	int house = mw->tick / 5 != prev / 5; /* timeouts are looked at every 10 ms */
	for (me_ep *ep = mw->eps, *nx; ep; ep = nx) {
		nx = ep->next;
		if (!house)
			goto slot;
		if (ep->ev_pending && now - ep->ev_last_ns > ME_EVENT_TIMEOUT_NS)
			me_rfc_emit(r, ep, now);
		if (ep->ib && ep->ib->in_digit >= 0 && now - ep->ib_ns > 100000000LL) {
			/* the audio stopped inside a digit (the sender went quiet): it ended */
			int code = ep->ib->in_digit;
			ep->ib->in_digit = -1;
			ep->ib->last_hit = -1;
			me_digit_end(r, ep, me_char_event(me_dtmf_chars[code]), ME_SRC_INBAND,
				     (uint32_t)(ep->ib->blocks * ME_DTMF_N / 8), now);
		}
		if (ep->rec)
			me_rec_tick(r, ep, now);
		if (ep->fax)
			me_fax_tick(r, ep, now);
	slot:
		if (ep->next_tick > mw->tick)
			continue;
		uint64_t behind = mw->tick - ep->next_tick;
		if (behind >= 3u * ep->ptks) {
			/* far behind (the worker was stalled): skip all but the last two slots */
			uint64_t k = behind / ep->ptks - 2;
			mw->missed_slots += k;
			ep->next_tick += k * ep->ptks;
			ep->ts += (uint32_t)(k * ep->spf);
		}
		/* a slot or two late: send them now (the receiver's jitter buffer takes a small
		 * burst; a skipped slot would be audio lost) */
		do {
			if (ep->next_tick + ep->ptks <= mw->tick)
				mw->late_slots++;
			me_ep_slot(r, w, ep, now);
			ep->next_tick += ep->ptks;
		} while (ep->next_tick <= mw->tick && ep->s->leg[ep->li].ep == ep);
	}
	int64_t late = rl_now() - (mw->t0 + (int64_t)mw->tick * ME_TICK_NS);
	int b = late <= 0 ? 0 : late / 100000 >= ME_JH ? ME_JH - 1 : (int)(late / 100000);
	mw->jh[b] += mw->sent - sent0;
}

/* io_uring: arm (once) the multishot poll on the worker's clock. Worker thread only. */
static void me_uring_poll(rl_relay *r, rl_worker *w, int closing)
{
	me_worker *mw = w->mw;
	(void)r;
	if (!mw || mw->polled || closing)
		return;
	struct io_uring_sqe *sqe = rlu_sqe(w->u);
	if (!sqe)
		return;
	sqe->opcode = IORING_OP_POLL_ADD;
	sqe->fd = mw->tfd;
	sqe->len = IORING_POLL_ADD_MULTI;
	sqe->poll32_events = POLLIN;
	sqe->user_data = RLU_UD(RLU_WAKE, 1);
	w->u->outstanding++;
	mw->polled = 1;
}

/* io_uring: the clock's poll completed. */
static void me_uring_tick(rl_relay *r, rl_worker *w, struct io_uring_cqe *c, int closing)
{
	me_worker *mw = w->mw;
	if (!(c->flags & IORING_CQE_F_MORE)) {
		w->u->outstanding--;
		if (mw)
			mw->polled = 0;
	}
	if (!closing && mw) {
		me_tick(r, w);
		me_uring_poll(r, w, closing);
	}
}

/* ------------------------------------------------------------------ lifecycle */

static void me_ep_free(rl_relay *r, rl_worker *w, me_ep *ep, int hangup);

/* Create the media state of a relay (idempotent). Returns 0 or an errno value. */
static int me_attach(rl_relay *r)
{
	if (r->media)
		return 0;
	me_codec_init();
	me_state *m = calloc(1, sizeof *m);
	if (!m)
		return ENOMEM;
	pthread_mutex_init(&m->mu, NULL);
	pthread_mutex_init(&m->evmu, NULL);
	pthread_mutex_init(&m->wmu, NULL);
	pthread_cond_init(&m->wcv, NULL);
	m->max_rec = 4096;
	m->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (m->efd < 0) {
		int e = errno;
		free(m);
		return e;
	}
	me_worker *mws = calloc((size_t)r->nworkers, sizeof *mws);
	if (!mws) {
		close(m->efd);
		free(m);
		return ENOMEM;
	}
	for (int i = 0; i < r->nworkers; i++) {
		me_worker *mw = &mws[i];
		mw->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
		if (r->uring) {
			mw->out = calloc(ME_OUT_SLOTS, sizeof *mw->out);
			mw->out_free = calloc(ME_OUT_SLOTS, sizeof(int));
		}
		if (mw->tfd < 0 || (r->uring && (!mw->out || !mw->out_free))) {
			for (int j = 0; j <= i; j++) {
				if (mws[j].tfd >= 0)
					close(mws[j].tfd);
				free(mws[j].out);
				free(mws[j].out_free);
			}
			free(mws);
			close(m->efd);
			free(m);
			return ENOMEM;
		}
		for (int k = 0; k < ME_OUT_SLOTS && mw->out_free; k++)
			mw->out_free[mw->nout_free++] = ME_OUT_SLOTS - 1 - k;
	}
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int e = pthread_create(&m->wth, NULL, me_writer_main, m);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (e) {
		for (int i = 0; i < r->nworkers; i++) {
			close(mws[i].tfd);
			free(mws[i].out);
			free(mws[i].out_free);
		}
		free(mws);
		close(m->efd);
		free(m);
		return e;
	}
	m->wrun = 1;
	r->media = m;
	for (int i = 0; i < r->nworkers; i++) {
		rl_worker *w = &r->w[i];
		pthread_mutex_lock(&w->mu);
		w->mw = &mws[i];
		if (!r->uring) {
			struct epoll_event ev = {.events = EPOLLIN, .data.u64 = RL_TICK};
			epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->mw->tfd, &ev);
		} else if (w->running) {
			uint64_t one = 1;
			if (write(w->wakefd, &one, sizeof one) < 0) {
				/* already due to wake */
			}
		}
		pthread_mutex_unlock(&w->mu);
	}
	return 0;
}

/* Everything of the media engine goes; the workers are already joined (rl_free). */
static void me_free(void *relay)
{
	rl_relay *r = relay;
	me_state *m = r->media;
	if (!m)
		return;
	for (int i = 0; i < r->nsess; i++) {
		rl_session *s = &r->sess[i];
		if (!s->in_use)
			continue;
		for (int li = 0; li < 2; li++) {
			if (s->leg[li].ep)
				me_ep_free(r, &r->w[s->worker], s->leg[li].ep, 1);
			me_watch_free(&s->leg[li]);
		}
	}
	for (int i = 0; i < ME_ROOMS; i++) {
		me_room *rm = m->rooms[i];
		if (!rm)
			continue;
		for (int k = 0; k < rm->n; k++) {
#ifdef HPBX_G722
			if (rm->m[k]->g722)
				g722_encode_free(rm->m[k]->g722);
#endif
			free(rm->m[k]);
		}
		pthread_mutex_destroy(&rm->mu);
		free(rm);
	}
	pthread_mutex_lock(&m->wmu);
	m->wstop = 1;
	pthread_cond_signal(&m->wcv);
	pthread_mutex_unlock(&m->wmu);
	if (m->wrun)
		pthread_join(m->wth, NULL); /* writes what is queued and closes every file first */
	me_worker *mws = r->w[0].mw;
	for (int i = 0; i < r->nworkers; i++) {
		me_worker *mw = r->w[i].mw;
		if (!mw)
			continue;
		close(mw->tfd);
		free(mw->out);
		free(mw->out_free);
		r->w[i].mw = NULL;
	}
	free(mws);
	close(m->efd);
	pthread_mutex_destroy(&m->mu);
	pthread_mutex_destroy(&m->evmu);
	pthread_mutex_destroy(&m->wmu);
	pthread_cond_destroy(&m->wcv);
	free(m);
	r->media = NULL;
}

/* ------------------------------------------------------------------ commands */

/* Locks the session's worker and returns its endpoint on leg li (NULL: *err says why). */
static me_ep *me_lock_ep(rl_relay *r, uint64_t h, int li, rl_session **sp, int *err)
{
	rl_session *s = rl_lock(r, h);
	*sp = s;
	if (!s) {
		*err = ENOENT;
		return NULL;
	}
	if (!s->leg[li].ep) {
		rl_unlock(r, s);
		*sp = NULL;
		*err = ENODEV;
		return NULL;
	}
	return s->leg[li].ep;
}

static void me_room_detach(rl_relay *r, me_ep *ep);

/* Free an endpoint (worker mutex held): recorder finished (hangup or stopped), room left. */
static void me_ep_free(rl_relay *r, rl_worker *w, me_ep *ep, int hangup)
{
	me_worker *mw = w->mw;
	if (ep->fax)
		me_fax_free(r, ep);
	if (ep->rec && me_rec_drain(r, ep, 1, rl_now())) /* what is held is written first */
		me_rec_stop(r, ep, hangup ? ME_REC_HANGUP : ME_REC_STOPPED, 0);
	if (ep->pl.list) {
		if (hangup) {
			me_plist_free(ep->pl.list);
			ep->pl.list = NULL;
			atomic_fetch_sub(&r->media->nplayers, 1);
		} else {
			me_play_end(r, ep, ME_PLAY_STOPPED);
		}
	}
	if (ep->mem)
		me_room_detach(r, ep);
	if (ep->prev)
		ep->prev->next = ep->next;
	else
		mw->eps = ep->next;
	if (ep->next)
		ep->next->prev = ep->prev;
	mw->nep--;
	me_worker_load(mw);
	ep->s->leg[ep->li].ep = NULL;
	free(ep->ib);
#ifdef HPBX_G722
	if (ep->g722e)
		g722_encode_free(ep->g722e);
	if (ep->g722d)
		g722_decode_free(ep->g722d);
#endif
	free(ep);
}

/* rl_delete hook (worker mutex held). */
static void me_session_end(void *relay, void *session)
{
	rl_relay *r = relay;
	rl_session *s = session;
	if (!r->media)
		return;
	for (int li = 0; li < 2; li++) {
		if (s->leg[li].ep)
			me_ep_free(r, &r->w[s->worker], s->leg[li].ep, 1);
		me_watch_free(&s->leg[li]);
	}
}

/*
 * Terminate leg li at a media endpoint (or change its codec and ptime when it already is).
 * Returns 0, ENOENT (session), ENOMEM.
 */
static int me_terminate(rl_relay *r, uint64_t h, int li, int codec, int pt, int ptime_ms, int dtmf_pt,
			int inband)
{
	rl_session *s = rl_lock(r, h);
	if (!s)
		return ENOENT;
	rl_worker *w = &r->w[s->worker];
	me_worker *mw = w->mw;
	rl_leg *l = &s->leg[li];
	me_ep *ep = l->ep;
	int64_t now = rl_now();
	if (!ep) {
		ep = calloc(1, sizeof *ep);
		if (!ep) {
			rl_unlock(r, s);
			return ENOMEM;
		}
		ep->s = s;
		ep->li = (uint8_t)li;
		ep->dtmf_alt = -1;
		me_txid *t = &l->tx;
		uint32_t rnd[3];
		if (getrandom(rnd, sizeof rnd, GRND_NONBLOCK) != (ssize_t)sizeof rnd) {
			rnd[0] = (uint32_t)now ^ (uint32_t)h;
			rnd[1] = (uint32_t)(now >> 20) * 2654435761u;
			rnd[2] = rnd[0] * 40503u;
		}
		if (!t->have) {
			t->ssrc = rnd[0];
			t->seq = (uint16_t)rnd[1];
			ep->ts = rnd[2];
		} else {
			/* continue the stream the phone already hears */
			int64_t el = (now - t->ns) / 125000, min = t->dur ? t->dur : 160;
			ep->ts = t->ts + (uint32_t)(el > min ? el : min);
		}
		t->have = 1;
		t->rewrite = 1;
		t->ns = now;
		ep->spurt = 1;
		ep->next_tick = mw->tick + 1 + (mw->phase++ % (unsigned)(ptime_ms / ME_TICK_MS));
		ep->next = mw->eps;
		if (mw->eps)
			mw->eps->prev = ep;
		mw->eps = ep;
		mw->nep++;
		l->ep = ep;
		if (l->dw)
			me_rfc_handover(ep, l->dw);
	}
	ep->codec = (uint8_t)codec;
	ep->pt = (uint8_t)pt;
	ep->dtmf_pt = (int16_t)dtmf_pt;
	ep->ptks = (uint8_t)(ptime_ms / ME_TICK_MS);
	ep->spf = (uint16_t)(ptime_ms * 8);
	if (inband && !ep->ib) {
		ep->ib = malloc(sizeof *ep->ib);
		if (ep->ib)
			me_dtmf_det_init(ep->ib);
	} else if (!inband && ep->ib) {
		free(ep->ib);
		ep->ib = NULL;
	}
	if (ep->mem) {
		pthread_mutex_lock(&ep->room->mu);
		ep->mem->codec = (uint8_t)codec;
#ifdef HPBX_G722
		if (codec == ME_G722 && !ep->mem->g722)
			ep->mem->g722 = me_g722_enc_new();
#endif
		pthread_mutex_unlock(&ep->room->mu);
	}
	int was = mw->armed;
	me_worker_load(mw);
	if (!was && mw->armed)
		ep->next_tick = 1 + (ep->next_tick - 1) % ep->ptks; /* the clock restarted at 0 */
	rl_unlock(r, s);
	return 0;
}

/*
 * Watch the digits of leg li while it relays (dtmf_pt, dtmf_alt: RFC 4733 payload types, -1
 * none; inband: Goertzel on the audio of codec/pt, which costs a decode per packet). The
 * packets are relayed as before; each digit is posted as a digit event with reason 1. All
 * of -1, -1, 0 ends the watch. While the leg is a media endpoint the endpoint hears the
 * digits instead (its own settings); the watch goes on when it relays again.
 * Returns 0, ENOENT, ENOMEM.
 */
static int me_watch(rl_relay *r, uint64_t h, int li, int dtmf_pt, int dtmf_alt, int inband, int codec, int pt)
{
	rl_session *s = rl_lock(r, h);
	if (!s)
		return ENOENT;
	rl_leg *l = &s->leg[li];
	if (dtmf_pt < 0 && dtmf_alt < 0 && !inband) {
		me_watch_free(l);
		rl_unlock(r, s);
		return 0;
	}
	me_ep *ep = l->dw;
	if (!ep) {
		ep = calloc(1, sizeof *ep);
		if (!ep) {
			rl_unlock(r, s);
			return ENOMEM;
		}
		ep->s = s;
		ep->li = (uint8_t)li;
		ep->watch = 1;
	}
	ep->dtmf_pt = (int16_t)dtmf_pt;
	ep->dtmf_alt = (int16_t)dtmf_alt;
	ep->codec = (uint8_t)codec;
	ep->pt = (uint8_t)pt;
	if (inband && !ep->ib) {
		ep->ib = malloc(sizeof *ep->ib);
		if (ep->ib)
			me_dtmf_det_init(ep->ib);
	} else if (!inband && ep->ib) {
		free(ep->ib);
		ep->ib = NULL;
	}
	l->dw = ep;
	rl_unlock(r, s);
	return 0;
}

/* Back to relaying: the endpoint's work stops (events: play_done/record_done "stopped"). */
static int me_bridge(rl_relay *r, uint64_t h, int li)
{
	rl_session *s = rl_lock(r, h);
	if (!s)
		return ENOENT;
	if (s->leg[li].ep) {
		if (s->leg[li].dw)
			me_rfc_handover(s->leg[li].dw, s->leg[li].ep);
		me_ep_free(r, &r->w[s->worker], s->leg[li].ep, 0);
		s->leg[li].tx.mapped = 0; /* the next relayed packet follows on in the leg's identity */
	}
	rl_unlock(r, s);
	return 0;
}

/* Play a list (takes the list: freed here on error). Returns 0, ENOENT, ENODEV (not terminated). */
static int me_play(rl_relay *r, uint64_t h, int li, me_plist *list, int loop, uint16_t barge, int kind,
		   uint32_t start)
{
	rl_session *s;
	int err;
	me_ep *ep = me_lock_ep(r, h, li, &s, &err);
	if (!ep) {
		me_plist_free(list);
		return err;
	}
	if (ep->pl.list)
		me_play_end(r, ep, ME_PLAY_STOPPED);
	ep->pl.list = list;
	ep->pl.item = 0;
	ep->pl.off = 0;
	/* a start offset (music on hold joining in the middle) is taken in the first prompt */
	if (list->n && start) {
		uint32_t n = list->p[0]->n;
		ep->pl.off = n ? start % n : 0;
	}
	ep->pl.loop = (uint8_t)loop;
	ep->pl.barge = barge;
	ep->pl.kind = (uint8_t)kind;
	ep->spurt = 1;
	atomic_fetch_add(&r->media->nplayers, 1);
	rl_unlock(r, s);
	return 0;
}

static int me_stop_play(rl_relay *r, uint64_t h, int li)
{
	rl_session *s;
	int err;
	me_ep *ep = me_lock_ep(r, h, li, &s, &err);
	if (!ep)
		return err;
	me_play_end(r, ep, ME_PLAY_STOPPED);
	rl_unlock(r, s);
	return 0;
}

/* Start recording into fd (owned from here on, also on error). Returns 0, ENOENT, ENODEV,
 * EMFILE (too many recordings), EBUSY (already recording), ENOMEM. */
static int me_record(rl_relay *r, uint64_t h, int li, int fd, uint32_t max_ms, uint32_t silence_ms,
		     uint16_t stop_mask, uint32_t gate_ms, uint32_t *id_out)
{
	me_state *m = r->media;
	if (atomic_fetch_add(&m->nrec, 1) >= m->max_rec) {
		atomic_fetch_sub(&m->nrec, 1);
		close(fd);
		return EMFILE;
	}
	rl_session *s;
	int err;
	me_ep *ep = me_lock_ep(r, h, li, &s, &err);
	if (!ep || ep->rec) {
		if (ep)
			rl_unlock(r, s);
		atomic_fetch_sub(&m->nrec, 1);
		close(fd);
		return ep ? EBUSY : err;
	}
	me_rec *rc = calloc(1, sizeof *rc);
	if (!rc) {
		rl_unlock(r, s);
		atomic_fetch_sub(&m->nrec, 1);
		close(fd);
		return ENOMEM;
	}
	int64_t now = rl_now();
	rc->id = atomic_fetch_add(&m->next_rec_id, 1) + 1;
	rc->fd = fd;
	rc->start_ns = now;
	rc->gate_ns = now + (int64_t)gate_ms * 1000000LL;
	rc->clock_ns = rc->gate_ns;
	rc->max_samples = (uint64_t)max_ms * 8;
	rc->silence_limit = silence_ms * 8;
	rc->stop_mask = stop_mask;
	ep->rec = rc;
	*id_out = rc->id;
	rl_unlock(r, s);
	return 0;
}

static int me_stop_record(rl_relay *r, uint64_t h, int li)
{
	rl_session *s;
	int err;
	me_ep *ep = me_lock_ep(r, h, li, &s, &err);
	if (!ep)
		return err;
	if (ep->rec) {
		int64_t now = rl_now();
		if (me_rec_drain(r, ep, 1, now))
			me_rec_stop(r, ep, ME_REC_STOPPED, 0);
	}
	rl_unlock(r, s);
	return 0;
}

/* Queue digits to send. Returns 0, ENOENT, ENODEV, ENOSPC (more than 32 queued). */
static int me_send_dtmf(rl_relay *r, uint64_t h, int li, const char *digits, int n, int duration_ms)
{
	rl_session *s;
	int err;
	me_ep *ep = me_lock_ep(r, h, li, &s, &err);
	if (!ep)
		return err;
	if (ep->dq_i >= ep->dq_n && !ep->dt_on)
		ep->dq_i = ep->dq_n = 0;
	if (ep->dq_n + n > (int)sizeof ep->dq) {
		rl_unlock(r, s);
		return ENOSPC;
	}
	memcpy(ep->dq + ep->dq_n, digits, (size_t)n);
	ep->dq_n = (uint8_t)(ep->dq_n + n);
	ep->dt_target = (uint16_t)(duration_ms * 8);
	rl_unlock(r, s);
	return 0;
}

/* ------------------------------------------------------------------ room commands */

static int me_room_create(rl_relay *r, uint32_t *id)
{
	me_state *m = r->media;
	me_room *rm = calloc(1, sizeof *rm);
	if (!rm)
		return ENOMEM;
	pthread_mutex_init(&rm->mu, NULL);
	pthread_mutex_lock(&m->mu);
	int slot = -1;
	for (int i = 0; i < ME_ROOMS; i++)
		if (!m->rooms[i]) {
			slot = i;
			break;
		}
	if (slot < 0) {
		pthread_mutex_unlock(&m->mu);
		pthread_mutex_destroy(&rm->mu);
		free(rm);
		return ENOSPC;
	}
	rm->id = ((uint32_t)(++m->room_gen[slot]) << 16) | (uint32_t)slot;
	rm->owner = (int)(m->next_owner++ % (unsigned)r->nworkers);
	m->rooms[slot] = rm;
	m->nrooms++;
	pthread_mutex_unlock(&m->mu);
	rl_worker *w = &r->w[rm->owner];
	pthread_mutex_lock(&w->mu);
	rm->next = w->mw->rooms;
	w->mw->rooms = rm;
	w->mw->nrooms++;
	me_worker_load(w->mw);
	pthread_mutex_unlock(&w->mu);
	*id = rm->id;
	return 0;
}

/* Leave the room (worker mutex held). */
static void me_room_detach(rl_relay *r, me_ep *ep)
{
	me_room *rm = ep->room;
	(void)r;
	pthread_mutex_lock(&rm->mu);
	for (int i = 0; i < rm->n; i++)
		if (rm->m[i] == ep->mem) {
			rm->m[i] = rm->m[--rm->n];
			break;
		}
	pthread_mutex_unlock(&rm->mu);
#ifdef HPBX_G722
	if (ep->mem->g722)
		g722_encode_free(ep->mem->g722);
#endif
	free(ep->mem);
	ep->mem = NULL;
	ep->room = NULL;
	ep->spurt = 1;
}

/* Returns 0, ENOENT (session), ENODEV (not terminated), ESRCH (room), ENOSPC (room full). */
static int me_room_join(rl_relay *r, uint32_t id, uint64_t h, int li)
{
	me_state *m = r->media;
	rl_session *s;
	int err;
	me_ep *ep = me_lock_ep(r, h, li, &s, &err);
	if (!ep)
		return err;
	me_member *mb = calloc(1, sizeof *mb);
	if (!mb) {
		rl_unlock(r, s);
		return ENOMEM;
	}
	if (ep->mem)
		me_room_detach(r, ep);
	pthread_mutex_lock(&m->mu);
	me_room *rm = m->rooms[id & 0xFFFF];
	if (!rm || rm->id != id) {
		pthread_mutex_unlock(&m->mu);
		rl_unlock(r, s);
		free(mb);
		return ESRCH;
	}
	pthread_mutex_lock(&rm->mu);
	pthread_mutex_unlock(&m->mu);
	if (rm->dying || rm->n >= ME_ROOM_MAX) {
		int e = rm->dying ? ESRCH : ENOSPC;
		pthread_mutex_unlock(&rm->mu);
		rl_unlock(r, s);
		free(mb);
		return e;
	}
	mb->handle = h;
	mb->li = (uint8_t)li;
	mb->codec = ep->codec;
#ifdef HPBX_G722
	if (mb->codec == ME_G722)
		mb->g722 = me_g722_enc_new();
#endif
	rm->m[rm->n++] = mb;
	pthread_mutex_unlock(&rm->mu);
	ep->mem = mb;
	ep->room = rm;
	rl_unlock(r, s);
	return 0;
}

/* Leave the room (only room rm, when given). */
static int me_room_leave_of(rl_relay *r, uint64_t h, int li, me_room *rm)
{
	rl_session *s;
	int err;
	me_ep *ep = me_lock_ep(r, h, li, &s, &err);
	if (!ep)
		return err;
	if (ep->mem && (!rm || ep->room == rm))
		me_room_detach(r, ep);
	rl_unlock(r, s);
	return 0;
}

static int me_room_leave(rl_relay *r, uint64_t h, int li)
{
	return me_room_leave_of(r, h, li, NULL);
}

static int me_room_mute(rl_relay *r, uint64_t h, int li, int muted)
{
	rl_session *s;
	int err;
	me_ep *ep = me_lock_ep(r, h, li, &s, &err);
	if (!ep)
		return err;
	if (!ep->mem) {
		rl_unlock(r, s);
		return ESRCH;
	}
	pthread_mutex_lock(&ep->room->mu);
	ep->mem->muted = (uint8_t)(muted != 0);
	pthread_mutex_unlock(&ep->room->mu);
	rl_unlock(r, s);
	return 0;
}

/* Members leave, then the room goes. Returns 0 or ESRCH. */
static int me_room_delete(rl_relay *r, uint32_t id)
{
	me_state *m = r->media;
	pthread_mutex_lock(&m->mu);
	me_room *rm = m->rooms[id & 0xFFFF];
	if (!rm || rm->id != id) {
		pthread_mutex_unlock(&m->mu);
		return ESRCH;
	}
	m->rooms[id & 0xFFFF] = NULL;
	m->nrooms--;
	pthread_mutex_lock(&rm->mu);
	rm->dying = 1;
	uint64_t hs[ME_ROOM_MAX];
	uint8_t ls[ME_ROOM_MAX];
	int n = rm->n;
	for (int i = 0; i < n; i++) {
		hs[i] = rm->m[i]->handle;
		ls[i] = rm->m[i]->li;
	}
	pthread_mutex_unlock(&rm->mu);
	pthread_mutex_unlock(&m->mu);
	for (int i = 0; i < n; i++)
		me_room_leave_of(r, hs[i], ls[i], rm);
	rl_worker *w = &r->w[rm->owner];
	pthread_mutex_lock(&w->mu);
	for (me_room **pp = &w->mw->rooms; *pp; pp = &(*pp)->next)
		if (*pp == rm) {
			*pp = rm->next;
			break;
		}
	w->mw->nrooms--;
	me_worker_load(w->mw);
	pthread_mutex_unlock(&w->mu);
	/* a member deleted meanwhile already left; any left now are orphans of a racing delete */
	for (int i = 0; i < rm->n; i++)
		free(rm->m[i]);
	pthread_mutex_destroy(&rm->mu);
	free(rm);
	return 0;
}

/* ------------------------------------------------------------------ stats */

typedef struct {
	int64_t players, recorders, endpoints, rooms, room_members;
	uint64_t late_ticks, missed_slots, late_slots, sent, send_errors, ticks, events_dropped,
		write_drops, write_errors;
	double jitter_p50_ms, jitter_p99_ms, jitter_max_ms;
} me_stats_t;

static void me_stats(rl_relay *r, me_stats_t *o)
{
	memset(o, 0, sizeof *o);
	me_state *m = r->media;
	if (!m)
		return;
	uint64_t jh[ME_JH];
	memset(jh, 0, sizeof jh);
	for (int i = 0; i < r->nworkers; i++) {
		rl_worker *w = &r->w[i];
		pthread_mutex_lock(&w->mu);
		me_worker *mw = w->mw;
		o->endpoints += mw->nep;
		for (me_ep *ep = mw->eps; ep; ep = ep->next)
			o->recorders += ep->rec != NULL;
		for (me_room *rm = mw->rooms; rm; rm = rm->next) {
			pthread_mutex_lock(&rm->mu);
			o->room_members += rm->n;
			pthread_mutex_unlock(&rm->mu);
		}
		o->late_ticks += mw->late_ticks;
		o->missed_slots += mw->missed_slots;
		o->late_slots += mw->late_slots;
		o->sent += mw->sent;
		o->send_errors += mw->send_errors;
		o->ticks += mw->ticks;
		for (int b = 0; b < ME_JH; b++)
			jh[b] += mw->jh[b];
		pthread_mutex_unlock(&w->mu);
	}
	o->players = atomic_load(&m->nplayers);
	pthread_mutex_lock(&m->mu);
	o->rooms = m->nrooms;
	pthread_mutex_unlock(&m->mu);
	pthread_mutex_lock(&m->evmu);
	o->events_dropped = m->ev_dropped;
	pthread_mutex_unlock(&m->evmu);
	pthread_mutex_lock(&m->wmu);
	o->write_drops = m->write_drops;
	o->write_errors = m->write_errors;
	pthread_mutex_unlock(&m->wmu);
	uint64_t total = 0, acc = 0;
	for (int b = 0; b < ME_JH; b++)
		total += jh[b];
	int p50 = -1, p99 = -1, mx = 0;
	for (int b = 0; b < ME_JH; b++) {
		acc += jh[b];
		if (jh[b])
			mx = b;
		if (p50 < 0 && acc * 2 >= total && total)
			p50 = b;
		if (p99 < 0 && acc * 100 >= total * 99 && total)
			p99 = b;
	}
	/* bucket b holds lateness in [b, b+1) * 0.1 ms: report the upper edge */
	o->jitter_p50_ms = p50 < 0 ? 0 : (p50 + 1) * 0.1;
	o->jitter_p99_ms = p99 < 0 ? 0 : (p99 + 1) * 0.1;
	o->jitter_max_ms = total ? (mx + 1) * 0.1 : 0;
}

/* Reset the send-lateness histogram and counters (benchmarks measure one phase). */
static void me_stats_reset(rl_relay *r)
{
	if (!r->media)
		return;
	for (int i = 0; i < r->nworkers; i++) {
		rl_worker *w = &r->w[i];
		pthread_mutex_lock(&w->mu);
		me_worker *mw = w->mw;
		memset(mw->jh, 0, sizeof mw->jh);
		mw->late_ticks = mw->missed_slots = mw->late_slots = mw->sent = mw->send_errors = mw->ticks = 0;
		pthread_mutex_unlock(&w->mu);
	}
}

static int me_event_fd(rl_relay *r)
{
	return r->media ? r->media->efd : -1;
}

#endif
