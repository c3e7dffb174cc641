/*
 * media_rtp.h: what the relay core needs to know of the media engine (included near the top of
 * relay_engine.h; the engine itself, media_engine.h, is included at its end).
 *
 * Every leg keeps its outgoing RTP identity (me_txid): the SSRC, sequence number and timestamp
 * of the last packet that left through it. While a leg only relays this is bookkeeping; once a
 * media endpoint has spoken on the leg, relayed packets are rewritten into that identity, so
 * the phone sees one continuous stream across announcement -> relayed audio -> music on hold.
 */
#ifndef HPBX_MEDIA_RTP_H
#define HPBX_MEDIA_RTP_H

#include <stdint.h>

typedef struct {
	uint32_t ssrc, ts;    /* of the newest packet sent through the leg */
	uint16_t seq;
	uint16_t dur;         /* samples the newest packet carried (0: unknown, 160 assumed) */
	uint8_t have;         /* a packet left through this leg */
	uint8_t rewrite;      /* an endpoint spoke here: relayed packets take this identity */
	uint8_t mapped;       /* rewrite offsets valid for in_ssrc */
	uint8_t new_spurt;    /* set the marker bit on the next relayed packet */
	uint16_t seq_off, in_seq;
	uint32_t ts_off, in_ssrc;
	int64_t ns;           /* CLOCK_MONOTONIC of that packet */
} me_txid;

#define RL_TICK (UINT64_MAX - 1) /* epoll tag of a worker's media clock */

struct me_ep;
struct me_worker;
struct me_state;

static inline uint32_t me_rd32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void me_wr32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/*
 * An RTP packet (len >= 12, version 2) about to leave through a leg whose identity is t:
 * rewrite it into the leg's identity when an endpoint spoke there, then remember it.
 * A new source (SSRC change or a sequence jump) is mapped to follow on seamlessly.
 */
static inline void me_tx_relayed(me_txid *t, uint8_t *p, size_t len, int64_t now)
{
	if (len < 12 || (p[0] >> 6) != 2)
		return;
	uint16_t seq = (uint16_t)((p[2] << 8) | p[3]);
	uint32_t ts = me_rd32(p + 4), ssrc = me_rd32(p + 8);
	if (t->rewrite) {
		uint16_t ahead = (uint16_t)(seq - t->in_seq);
		if (!t->mapped || ssrc != t->in_ssrc || (ahead > 3000 && ahead < 65536 - 100)) {
			/* 8 kHz samples since the last packet, at least that packet's own length */
			int64_t el = t->have ? (now - t->ns) / 125000 : 0, min = t->dur ? t->dur : 160;
			if (el < min)
				el = min;
			t->seq_off = (uint16_t)(t->seq + 1 - seq);
			t->ts_off = t->ts + (uint32_t)el - ts;
			t->in_ssrc = ssrc;
			t->mapped = 1;
			t->new_spurt = 1;
		}
		if ((int16_t)(seq - t->in_seq) > 0 || t->new_spurt)
			t->in_seq = seq;
		seq = (uint16_t)(seq + t->seq_off);
		ts += t->ts_off;
		ssrc = t->ssrc;
		p[2] = (uint8_t)(seq >> 8);
		p[3] = (uint8_t)seq;
		me_wr32(p + 4, ts);
		me_wr32(p + 8, ssrc);
		if (t->new_spurt) {
			p[1] |= 0x80;
			t->new_spurt = 0;
		}
	}
	if (!t->have || ssrc != t->ssrc || (int16_t)(seq - t->seq) > 0) {
		t->seq = seq;
		t->ts = ts;
		t->dur = 0;
	}
	t->ssrc = ssrc;
	t->ns = now;
	t->have = 1;
}

/* hooks the relay core calls; defined in media_engine.h */
static int me_rx(void *relay, void *session, int li, const uint8_t *p, size_t len, int64_t now);
static void me_session_end(void *relay, void *session);
static void me_watch_rx(void *relay, void *session, int li, const uint8_t *p, size_t len, int64_t now);
static void me_free(void *relay);

#endif
