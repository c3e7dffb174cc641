/*
 * media_fax.h: a fax endpoint (T.30 over G.711 audio) inside the relay's worker threads, on
 * spandsp's fax_state_t. Included by media_engine.h (it sees the endpoint, the send path and
 * the event queue); built only when the build found spandsp (HPBX_FAX).
 *
 * What runs where (all in the worker that owns the session, under its mutex):
 *   - Receive: RTP payloads go through a fixed reorder/jitter buffer of ME_FAX_SLOTS packets by
 *     sequence number. Nothing is concealed: a packet declared lost (ME_FAX_HOLD later packets
 *     arrived, or it is ME_FAX_WAIT_NS overdue) is told to spandsp as a gap of its exact RTP
 *     timestamp length with fax_rx_fillin(), which keeps the demodulator's state instead of
 *     feeding it silence (silence makes V.17/V.29 lose the carrier and the page). While nothing
 *     arrives at all (a sender that stopped), the T.30 timers are kept running by fill-in on the
 *     endpoint's own clock, so the call ends with spandsp's timeout and what was received.
 *   - Transmit: every ptime slot fax_tx() produces the modem's audio (silence when idle), encoded
 *     to the leg's PCMA/PCMU and sent in the leg's RTP identity.
 *   - spandsp writes received pages to the TIFF-F file itself (libtiff, at each page end: a few
 *     kB of file I/O in the worker per page) and reads the pages to send the same way.
 *   - End (phase E, or hangup / stop before it): the outcome is kept in a small table by fax id
 *     (me_fax_info) and a fax_done event {id, pages, completion code} is posted.
 */
#ifndef HPBX_MEDIA_FAX_H
#define HPBX_MEDIA_FAX_H

#include "udptl.h"

#ifdef HPBX_FAX
#include <spandsp.h>
#define HPBX_FAX_BUILT 1
#else
#define HPBX_FAX_BUILT 0
#endif

#define ME_EV_FAX_DONE 5
#define ME_FAX_SLOTS 16          /* reorder buffer (packets) */
#define ME_FAX_HOLD 4            /* a missing packet is lost once this many later ones are held */
#define ME_FAX_WAIT_NS 80000000LL    /* ... or once it is this late (80 ms) */
#define ME_FAX_IDLE_NS 200000000LL   /* no packet for this long: fill in on our clock */
#define ME_FAX_MAXPAY 480
#define ME_FAX_RESULTS 1024
#define ME_FAX_PATH 512
#define ME_T38_DEPTH 3           /* UDPTL redundancy: earlier IFPs carried in each packet */
#define ME_T38_Q 16              /* UDPTL packets waiting for the endpoint's next slot */
#define ME_T38_PKT ME_PKT
#define ME_T38_JUMP 256          /* a sequence number further ahead is believed only when confirmed */

/* What Python reads after fax_done (me_fax_info). */
typedef struct {
	uint32_t id;
	int used;
	int done;
	int status;                 /* T30_ERR_* completion code */
	int pages;                  /* pages received (receive) or sent (send) */
	int bit_rate, ecm, x_res, y_res, width, length, bad_rows, encoding;
	char phase;                 /* last T.30 phase reached: 'A' call set-up, 'B', 'C' page, 'D', 'E' */
	int64_t start_ns, end_ns;
	char remote_ident[24];      /* the far end's CSID / TSI */
	char path[ME_FAX_PATH];
	uint64_t lost_packets, late_packets, fillin_samples;
	int t38;                    /* the fax ran (or ended) over T.38 */
	uint64_t udptl_rx, udptl_bad, udptl_recovered;
} me_fax_result;

static pthread_mutex_t me_fax_mu = PTHREAD_MUTEX_INITIALIZER;
static me_fax_result me_fax_tab[ME_FAX_RESULTS];
static atomic_uint me_fax_next_id = 1;

typedef struct {
	uint32_t ts;
	uint16_t seq, len;
	uint8_t used;
	int64_t arrived;
	uint8_t data[ME_FAX_MAXPAY];
} me_fslot;

typedef struct me_fax {
	uint32_t id;
	int caller;                 /* sending side (calling party) */
	int finished;               /* fax_done posted */
	char phase;
#ifdef HPBX_FAX
	fax_state_t *fs;
	t38_terminal_state_t *t38;  /* T.38 (UDPTL) instead of fs */
	t30_state_t *t30;
#endif
	int is_t38;
	uint16_t tx_seq;
	int32_t rx_seq;             /* last UDPTL sequence number handed to spandsp; -1 none */
	int hist_n, hist_len[ME_T38_DEPTH];
	uint8_t hist[ME_T38_DEPTH][UDPTL_MAX_IFP];
	int nq, qlen[ME_T38_Q];
	uint8_t q[ME_T38_Q][ME_T38_PKT];
	uint64_t udptl_rx, udptl_bad, udptl_recovered, t38_qdrop;
	int jump_have;              /* a datagram far ahead was seen: believed when its successor follows */
	uint16_t jump_seq;
	rl_relay *r;
	me_ep *ep;
	/* jitter buffer */
	uint8_t have_seq, clock_fill;
	uint16_t next_seq;
	uint32_t next_ts;
	int held;
	int64_t last_rx_ns, idle_fed_ns;
	uint64_t lost, late, fillin;
	int64_t start_ns;
	me_fslot slot[ME_FAX_SLOTS];
} me_fax;

#ifdef HPBX_FAX

static me_ep *me_lock_ep(rl_relay *r, uint64_t h, int li, rl_session **sp, int *err);

static void me_fax_store(me_fax *fx, int status, int done)
{
	t30_stats_t st;
	memset(&st, 0, sizeof st);
	t30_get_transfer_statistics(fx->t30, &st);
	pthread_mutex_lock(&me_fax_mu);
	me_fax_result *res = &me_fax_tab[fx->id % ME_FAX_RESULTS];
	if (res->id == fx->id) {
		res->done = done;
		res->status = status;
		res->pages = fx->caller ? st.pages_tx : st.pages_rx;
		res->bit_rate = st.bit_rate;
		res->ecm = st.error_correcting_mode;
		res->x_res = st.x_resolution;
		res->y_res = st.y_resolution;
		res->width = st.width;
		res->length = st.length;
		res->bad_rows = st.bad_rows;
		res->encoding = st.encoding;
		res->phase = fx->phase;
		res->end_ns = rl_now();
		const char *id = t30_get_rx_ident(fx->t30);
		snprintf(res->remote_ident, sizeof res->remote_ident, "%s", id ? id : "");
		res->lost_packets = fx->lost;
		res->late_packets = fx->late;
		res->fillin_samples = fx->fillin;
		res->t38 = fx->is_t38;
		res->udptl_rx = fx->udptl_rx;
		res->udptl_bad = fx->udptl_bad;
		res->udptl_recovered = fx->udptl_recovered;
	}
	pthread_mutex_unlock(&me_fax_mu);
}

static void me_fax_phase_e(t30_state_t *t, void *user, int code)
{
	me_fax *fx = user;
	(void)t;
	if (fx->finished)
		return;
	fx->finished = 1;
	if (code == T30_ERR_OK)
		fx->phase = 'E';
	me_fax_store(fx, code, 1);
	t30_stats_t st;
	t30_get_transfer_statistics(fx->t30, &st);
	me_post_ep(fx->r, fx->ep, ME_EV_FAX_DONE, code & 0xff, 0, 0,
		   (uint32_t)(fx->caller ? st.pages_tx : st.pages_rx), fx->id);
}

/* The phase reached, visible to fax_info while the fax runs. */
static void me_fax_set_phase(me_fax *fx, char ph)
{
	fx->phase = ph;
	pthread_mutex_lock(&me_fax_mu);
	me_fax_result *res = &me_fax_tab[fx->id % ME_FAX_RESULTS];
	if (res->id == fx->id)
		res->phase = ph;
	pthread_mutex_unlock(&me_fax_mu);
}

static int me_fax_phase_b(t30_state_t *t, void *user, int result)
{
	me_fax *fx = user;
	(void)t;
	(void)result;
	me_fax_set_phase(fx, 'B');
	return T30_ERR_OK;
}

static int me_fax_phase_d(t30_state_t *t, void *user, int result)
{
	me_fax *fx = user;
	(void)t;
	(void)result;
	me_fax_set_phase(fx, 'D');
	return T30_ERR_OK;
}

/* Feed in-order audio (a payload of the leg's G.711 law) to the modem. */
static void me_fax_feed(me_fax *fx, int codec, const uint8_t *pay, int n)
{
	int16_t pcm[ME_FAX_MAXPAY];
	me_decode(codec, pay, pcm, n);
	fax_rx(fx->fs, pcm, n);
}

static void me_fax_fill(me_fax *fx, uint32_t n)
{
	if (n > 8000)
		n = 8000; /* a timestamp jump is believed up to 1 s */
	if (!n)
		return;
	fx->fillin += n;
	fax_rx_fillin(fx->fs, (int)n);
}

/* Hand over what is in order; force: declare the next missing packet lost. */
static void me_fax_drain(me_fax *fx, int codec, int force, int64_t now)
{
	while (fx->held) {
		me_fslot *sl = &fx->slot[fx->next_seq % ME_FAX_SLOTS];
		if (sl->used && sl->seq == fx->next_seq) {
			int32_t gap = (int32_t)(sl->ts - fx->next_ts);
			if (gap > 0)
				me_fax_fill(fx, (uint32_t)gap); /* a timestamp jump inside the stream */
			me_fax_feed(fx, codec, sl->data, sl->len);
			fx->next_ts = sl->ts + sl->len;
			fx->next_seq++;
			sl->used = 0;
			fx->held--;
			continue;
		}
		/* the next packet is missing: wait, unless enough later ones came or it is overdue */
		int64_t oldest = INT64_MAX;
		for (int i = 0; i < ME_FAX_SLOTS; i++)
			if (fx->slot[i].used && fx->slot[i].arrived < oldest)
				oldest = fx->slot[i].arrived;
		if (!force && fx->held < ME_FAX_HOLD && now - oldest < ME_FAX_WAIT_NS)
			return;
		/* lost: the gap up to the next packet held goes to spandsp as fill-in */
		uint16_t best = 0;
		int found = 0;
		for (int i = 0; i < ME_FAX_SLOTS; i++) {
			me_fslot *c = &fx->slot[i];
			if (!c->used)
				continue;
			uint16_t d = (uint16_t)(c->seq - fx->next_seq);
			if (!found || d < best)
				best = d, found = 1;
		}
		me_fslot *nx = &fx->slot[(uint16_t)(fx->next_seq + best) % ME_FAX_SLOTS];
		fx->lost += best;
		int32_t gap = (int32_t)(nx->ts - fx->next_ts);
		if (gap > 0)
			me_fax_fill(fx, (uint32_t)gap);
		fx->next_ts = nx->ts;
		fx->next_seq = nx->seq;
		force = 0;
	}
}

/* An RTP packet of the terminated leg (header already parsed by me_rx). */
static void me_fax_rx(rl_relay *r, me_ep *ep, uint16_t seq, uint32_t ts, int codec, const uint8_t *pay, int plen,
		      int64_t now)
{
	me_fax *fx = ep->fax;
	(void)r;
	if (codec != ME_PCMA && codec != ME_PCMU)
		return;
	if (plen > ME_FAX_MAXPAY)
		plen = ME_FAX_MAXPAY;
	if (plen <= 0)
		return;
	fx->last_rx_ns = now;
	if (!fx->have_seq || fx->clock_fill) {
		/* first packet, or the stream comes back after we filled in on our own clock */
		fx->have_seq = 1;
		fx->clock_fill = 0;
		for (int i = 0; i < ME_FAX_SLOTS; i++)
			fx->slot[i].used = 0;
		fx->held = 0;
		fx->next_seq = seq;
		fx->next_ts = ts;
	}
	int16_t d = (int16_t)(seq - fx->next_seq);
	if (d < 0) {
		fx->late++; /* already played out (or declared lost) */
		return;
	}
	if (d >= ME_FAX_SLOTS) {
		/* far ahead: what is held goes first, then we follow the new position */
		while (fx->held)
			me_fax_drain(fx, codec, 1, now);
		fx->lost += (uint16_t)(seq - fx->next_seq);
		int32_t gap = (int32_t)(ts - fx->next_ts);
		if (gap > 0)
			me_fax_fill(fx, (uint32_t)gap);
		fx->next_seq = seq;
		fx->next_ts = ts;
	}
	me_fslot *sl = &fx->slot[seq % ME_FAX_SLOTS];
	if (sl->used)
		return; /* a duplicate */
	sl->used = 1;
	sl->seq = seq;
	sl->ts = ts;
	sl->len = (uint16_t)plen;
	sl->arrived = now;
	memcpy(sl->data, pay, (size_t)plen);
	fx->held++;
	me_fax_drain(fx, codec, 0, now);
}

/* ------------------------------------------------------------------ T.38 (UDPTL) */

/* spandsp's T.38 core has an IFP packet to send (count = copies it asks for): framed as UDPTL
 * with the last ME_T38_DEPTH IFPs as redundancy, queued for the endpoint's next slot (this runs
 * from t38_terminal_send_timeout in the slot, or from a received packet's processing). */
static int me_t38_tx(t38_core_state_t *c, void *user, const uint8_t *buf, int len, int count)
{
	me_fax *fx = user;
	(void)c;
	if (len < 1 || len > UDPTL_MAX_IFP)
		return -1;
	const uint8_t *sec[ME_T38_DEPTH];
	int sl[ME_T38_DEPTH];
	for (int i = 0; i < fx->hist_n; i++) {
		sec[i] = fx->hist[i];
		sl[i] = fx->hist_len[i];
	}
	if (count < 1)
		count = 1;
	if (count > 3)
		count = 3;
	uint16_t seq = fx->tx_seq++;
	for (int k = 0; k < count; k++) {
		if (fx->nq >= ME_T38_Q) {
			fx->t38_qdrop++;
			break;
		}
		int n = udptl_encode(fx->q[fx->nq], ME_T38_PKT, seq, buf, len, sec, sl, fx->hist_n);
		if (n > 0)
			fx->qlen[fx->nq++] = n;
	}
	for (int i = ME_T38_DEPTH - 1; i > 0; i--) {
		if (i - 1 < fx->hist_n) {
			memcpy(fx->hist[i], fx->hist[i - 1], (size_t)fx->hist_len[i - 1]);
			fx->hist_len[i] = fx->hist_len[i - 1];
		}
	}
	memcpy(fx->hist[0], buf, (size_t)len);
	fx->hist_len[0] = len;
	if (fx->hist_n < ME_T38_DEPTH)
		fx->hist_n++;
	return 0;
}

/* A datagram on a T.38 leg: UDPTL decoded (garbage dropped and counted); IFPs lost before it
 * are recovered from its redundancy, then the primary goes to spandsp, in sequence order. */
static void me_t38_rx(me_fax *fx, const uint8_t *p, int len)
{
	udptl_pkt u;
	if (fx->finished)
		return;
	if (udptl_decode(p, len, &u)) {
		fx->udptl_bad++;
		return;
	}
	fx->udptl_rx++;
	fx->last_rx_ns = rl_now();
	t38_core_state_t *c = t38_terminal_get_t38_core_state(fx->t38);
	if (fx->rx_seq >= 0) {
		uint16_t d = (uint16_t)(u.seq - (uint16_t)fx->rx_seq);
		if (d == 0 || d > 0xf000)
			return; /* a copy, or late: its IFP was had already (or recovered) */
		if (d > ME_T38_JUMP) {
			/* far ahead: a garbage datagram that happened to decode, or the peer restarted
			 * its numbering. Believed once the next datagram follows it. */
			if (!(fx->jump_have && u.seq == (uint16_t)(fx->jump_seq + 1))) {
				fx->jump_have = 1;
				fx->jump_seq = u.seq;
				fx->udptl_bad++;
				return;
			}
			fx->jump_have = 0;
			u.nsec = 0; /* nothing before it is ours to recover */
		}
		if (d > 1) {
			int miss = d - 1 < u.nsec ? d - 1 : u.nsec;
			for (int i = miss; i >= 1; i--) {
				fx->udptl_recovered++;
				t38_core_rx_ifp_packet(c, u.sec[i - 1], u.sec_len[i - 1], (uint16_t)(u.seq - i));
			}
		}
	}
	fx->rx_seq = u.seq;
	t38_core_rx_ifp_packet(c, u.ifp, u.ifp_len, u.seq);
}

static void me_t38_flush(rl_relay *r, rl_worker *w, me_ep *ep, me_fax *fx)
{
	for (int i = 0; i < fx->nq; i++)
		me_send(r, w, ep, fx->q[i], fx->qlen[i]);
	fx->nq = 0;
}

/* Every 10 ms: overdue packets are declared lost; a silent sender gets fill-in on our clock. */
static void me_fax_tick(rl_relay *r, me_ep *ep, int64_t now)
{
	me_fax *fx = ep->fax;
	(void)r;
	if (fx->finished || fx->is_t38)
		return;
	if (fx->held)
		me_fax_drain(fx, ep->codec, 0, now);
	int64_t since = fx->last_rx_ns ? fx->last_rx_ns : fx->start_ns;
	if (now - since >= ME_FAX_IDLE_NS && !fx->held) {
		if (fx->idle_fed_ns < since)
			fx->idle_fed_ns = since;
		int64_t el = now - fx->idle_fed_ns;
		uint32_t n = (uint32_t)(el / 125000);
		if (n) {
			fx->clock_fill = 1;
			me_fax_fill(fx, n);
			fx->idle_fed_ns += (int64_t)n * 125000;
		}
	}
}

/* The endpoint's slot: the modem's audio (silence while idle). Returns 1 (it used the slot). */
static int me_fax_slot(rl_relay *r, rl_worker *w, me_ep *ep, int64_t now)
{
	me_fax *fx = ep->fax;
	if (fx->is_t38) {
		/* T.38: spandsp's timers advance by the slot; what it has to send leaves now */
		if (!fx->finished)
			t38_terminal_send_timeout(fx->t38, ep->spf);
		me_t38_flush(r, w, ep, fx);
		return 1;
	}
	int16_t pcm[ME_MAX_SPF];
	int n = fax_tx(fx->fs, pcm, ep->spf);
	if (n < 0)
		n = 0;
	if (n < ep->spf)
		memset(pcm + n, 0, sizeof(int16_t) * (size_t)(ep->spf - n));
	uint8_t b[ME_PKT];
	uint8_t *p = me_hdr(ep, b, ep->spurt, ep->pt, ep->ts, now);
	me_encode(ep->codec, pcm, p, ep->spf);
	ep->spurt = 0;
	me_send(r, w, ep, b, 12 + ep->spf);
	return 1;
}

/* Free the fax of an endpoint (worker mutex held). Before phase E this ends the T.30 session:
 * the pages complete so far stay in the file and fax_done reports call dropped. */
static void me_fax_free(rl_relay *r, me_ep *ep)
{
	me_fax *fx = ep->fax;
	(void)r;
	if (!fx)
		return;
	if (!fx->finished) {
		t30_terminate(fx->t30); /* closes the TIFF (phase E handler runs) */
		if (!fx->finished) {
			fx->finished = 1;
			me_fax_store(fx, T30_ERR_CALLDROPPED, 1);
			t30_stats_t st;
			t30_get_transfer_statistics(fx->t30, &st);
			me_post_ep(r, ep, ME_EV_FAX_DONE, T30_ERR_CALLDROPPED, 0, 0,
				   (uint32_t)(fx->caller ? st.pages_tx : st.pages_rx), fx->id);
		}
	}
	if (fx->is_t38)
		t38_terminal_free(fx->t38);
	else
		fax_free(fx->fs);
	free(fx);
	ep->fax = NULL;
}

/*
 * Start a fax on a terminated leg: send (caller = 1, path = a TIFF-F to send) or receive (path =
 * the TIFF-F to write). Returns 0 (id in *id_out), ENOENT, ENODEV (not an endpoint), EBUSY
 * (a fax already runs there), EINVAL (codec not G.711), ENOMEM.
 */
static int me_fax_start(rl_relay *r, uint64_t h, int li, const char *path, int send, const char *ident,
			const char *header, int ecm, int t38, uint32_t *id_out)
{
	rl_session *s;
	int err;
	me_ep *ep = me_lock_ep(r, h, li, &s, &err);
	if (!ep)
		return err;
	if (ep->fax && !(t38 && !ep->fax->is_t38)) {
		rl_unlock(r, s);
		return EBUSY;
	}
	if (!t38 && ep->codec != ME_PCMA && ep->codec != ME_PCMU) {
		rl_unlock(r, s);
		return EINVAL;
	}
	me_fax *fx = calloc(1, sizeof *fx);
	if (!fx) {
		rl_unlock(r, s);
		return ENOMEM;
	}
	if (t38) {
		fx->t38 = t38_terminal_init(NULL, send ? 1 : 0, me_t38_tx, fx);
		if (!fx->t38) {
			free(fx);
			rl_unlock(r, s);
			return ENOMEM;
		}
		t38_core_state_t *c = t38_terminal_get_t38_core_state(fx->t38);
		t38_set_t38_version(c, 0);
		t38_set_fastest_image_data_rate(c, 14400);
		t38_set_data_rate_management_method(c, T38_DATA_RATE_MANAGEMENT_TRANSFERRED_TCF);
		t38_set_max_buffer_size(c, 200);
		/* UDPTL redundancy recovers a lost packet: one copy of each is enough */
		for (int cat = T38_PACKET_CATEGORY_INDICATOR; cat <= T38_PACKET_CATEGORY_IMAGE_DATA_END; cat++)
			t38_set_redundancy_control(c, cat, 1);
		t38_terminal_set_config(fx->t38, 0);
		t38_terminal_set_tep_mode(fx->t38, 0);
		fx->t30 = t38_terminal_get_t30_state(fx->t38);
		fx->is_t38 = 1;
		fx->rx_seq = -1;
		s->leg[li].udptl = 1;
		if (ep->fax) {
			/* the call switched from audio to T.38 (re-INVITE): the audio fax ends quietly,
			 * its file is written anew by this one */
			me_fax *old = ep->fax;
			old->finished = 1;
			t30_terminate(old->t30);
			me_fax_store(old, T30_ERR_CALLDROPPED, 1);
			fax_free(old->fs);
			free(old);
			ep->fax = NULL;
		}
	} else {
		fx->fs = fax_init(NULL, send ? 1 : 0);
		if (!fx->fs) {
			free(fx);
			rl_unlock(r, s);
			return ENOMEM;
		}
		fx->t30 = fax_get_t30_state(fx->fs);
	}
	fx->caller = send ? 1 : 0;
	fx->r = r;
	fx->ep = ep;
	fx->phase = 'A';
	fx->start_ns = rl_now();
	fx->id = atomic_fetch_add(&me_fax_next_id, 1);
	if (!t38) {
		fax_set_transmit_on_idle(fx->fs, 1);
		fax_set_tep_mode(fx->fs, 0);
	}
	if (ident && *ident)
		t30_set_tx_ident(fx->t30, ident);
	if (header && *header)
		t30_set_tx_page_header_info(fx->t30, header);
	t30_set_ecm_capability(fx->t30, ecm);
	t30_set_supported_compressions(fx->t30, T30_SUPPORT_T4_1D_COMPRESSION | T30_SUPPORT_T4_2D_COMPRESSION |
							T30_SUPPORT_T6_COMPRESSION);
	if (send)
		t30_set_tx_file(fx->t30, path, -1, -1);
	else
		t30_set_rx_file(fx->t30, path, -1);
	t30_set_phase_b_handler(fx->t30, me_fax_phase_b, fx);
	t30_set_phase_d_handler(fx->t30, me_fax_phase_d, fx);
	t30_set_phase_e_handler(fx->t30, me_fax_phase_e, fx);
	pthread_mutex_lock(&me_fax_mu);
	me_fax_result *res = &me_fax_tab[fx->id % ME_FAX_RESULTS];
	memset(res, 0, sizeof *res);
	res->id = fx->id;
	res->used = 1;
	res->phase = 'A';
	res->start_ns = fx->start_ns;
	res->t38 = t38;
	snprintf(res->path, sizeof res->path, "%s", path);
	pthread_mutex_unlock(&me_fax_mu);
	ep->fax = fx;
	*id_out = fx->id;
	rl_unlock(r, s);
	return 0;
}

/* Stop a fax before its end (fax_done comes with call dropped). */
static int me_fax_stop(rl_relay *r, uint64_t h, int li)
{
	rl_session *s;
	int err;
	me_ep *ep = me_lock_ep(r, h, li, &s, &err);
	if (!ep)
		return err;
	if (ep->fax)
		me_fax_free(r, ep);
	rl_unlock(r, s);
	return 0;
}

/* The outcome of fax id (0 = found; ENOENT when it is no longer in the table). */
static int me_fax_info(uint32_t id, me_fax_result *out)
{
	pthread_mutex_lock(&me_fax_mu);
	me_fax_result *res = &me_fax_tab[id % ME_FAX_RESULTS];
	int ok = res->used && res->id == id;
	if (ok)
		*out = *res;
	pthread_mutex_unlock(&me_fax_mu);
	return ok ? 0 : ENOENT;
}

static const char *me_fax_status_str(int code)
{
	return t30_completion_code_to_str(code);
}

#else /* no spandsp: no fax */

static void me_fax_rx(rl_relay *r, me_ep *ep, uint16_t seq, uint32_t ts, int codec, const uint8_t *pay, int plen,
		      int64_t now)
{
	(void)r, (void)ep, (void)seq, (void)ts, (void)codec, (void)pay, (void)plen, (void)now;
}
static void me_fax_tick(rl_relay *r, me_ep *ep, int64_t now) { (void)r, (void)ep, (void)now; }
static int me_fax_slot(rl_relay *r, rl_worker *w, me_ep *ep, int64_t now)
{
	(void)r, (void)w, (void)ep, (void)now;
	return 0;
}
static void me_fax_free(rl_relay *r, me_ep *ep) { (void)r, (void)ep; }
static int me_fax_start(rl_relay *r, uint64_t h, int li, const char *path, int send, const char *ident,
			const char *header, int ecm, int t38, uint32_t *id_out)
{
	(void)r, (void)h, (void)li, (void)path, (void)send, (void)ident, (void)header, (void)ecm, (void)t38, (void)id_out;
	return ENOSYS;
}
static int me_fax_stop(rl_relay *r, uint64_t h, int li) { (void)r, (void)h, (void)li; return 0; }
static int me_fax_info(uint32_t id, me_fax_result *out) { (void)id, (void)out; return ENOENT; }
static void me_t38_rx(me_fax *fx, const uint8_t *p, int len) { (void)fx, (void)p, (void)len; }
static const char *me_fax_status_str(int code) { (void)code; return "fax not built"; }

#endif /* HPBX_FAX */

#endif
