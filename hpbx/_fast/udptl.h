/*
 * udptl.h: UDPTL framing of T.38 (ITU-T T.38 clause 9 / Annex: ASN.1 aligned PER of
 * UDPTLPacket), hpbx's own: spandsp 0.0.6 gives and takes bare IFP packets only.
 *
 *   UDPTLPacket ::= SEQUENCE { seq-number INTEGER (0..65535),
 *                              primary-ifp-packet OPEN TYPE (IFPPacket),
 *                              error-recovery CHOICE {
 *                                  secondary-ifp-packets SEQUENCE OF OPEN TYPE,   -- redundancy
 *                                  fec-info SEQUENCE { ... } } }
 *
 * Decoding takes untrusted bytes: every length is checked against the datagram, a length in
 * PER's fragmented form (>= 16 K, never needed for a fax IFP) is refused, and at most
 * UDPTL_MAX_SEC secondaries are kept (more are parsed and skipped). Nothing is allocated.
 * FEC error recovery is accepted and its FEC data ignored (the primary is used).
 */
#ifndef HPBX_UDPTL_H
#define HPBX_UDPTL_H

#include <stdint.h>
#include <string.h>

#define UDPTL_MAX_IFP 512   /* longest IFP accepted or sent */
#define UDPTL_MAX_SEC 16    /* secondaries kept from one packet */
#define UDPTL_MAX_PKT 1500

typedef struct {
	uint16_t seq;
	const uint8_t *ifp;
	int ifp_len;
	int fec;                /* error recovery was FEC (its data ignored) */
	int nsec;               /* secondaries kept: sec[0] is seq - 1, sec[1] seq - 2, ... */
	const uint8_t *sec[UDPTL_MAX_SEC];
	int sec_len[UDPTL_MAX_SEC];
} udptl_pkt;

/* PER length determinant (unconstrained, not fragmented). */
static inline int udptl_get_len(const uint8_t *b, int len, int *pos, int *out)
{
	if (*pos >= len)
		return -1;
	uint8_t c = b[*pos];
	if (!(c & 0x80)) {
		*out = c;
		*pos += 1;
		return 0;
	}
	if ((c & 0xc0) == 0x80) {
		if (*pos + 1 >= len)
			return -1;
		*out = ((c & 0x3f) << 8) | b[*pos + 1];
		*pos += 2;
		return 0;
	}
	return -1; /* fragmented */
}

static inline int udptl_get_open(const uint8_t *b, int len, int *pos, const uint8_t **p, int *plen)
{
	int n;
	if (udptl_get_len(b, len, pos, &n) || n > len - *pos)
		return -1;
	*p = b + *pos;
	*plen = n;
	*pos += n;
	return 0;
}

/* 0 and *u filled, or -1 (malformed: drop the datagram). */
static int udptl_decode(const uint8_t *b, int len, udptl_pkt *u)
{
	int pos = 2, n;
	memset(u, 0, sizeof *u);
	if (len < 4 || len > UDPTL_MAX_PKT)
		return -1;
	u->seq = (uint16_t)((b[0] << 8) | b[1]);
	if (udptl_get_open(b, len, &pos, &u->ifp, &u->ifp_len) || u->ifp_len < 1 || u->ifp_len > UDPTL_MAX_IFP)
		return -1;
	if (pos >= len)
		return -1;
	uint8_t choice = b[pos++];
	if (choice & 0x80) {
		u->fec = 1; /* fec-info: not used */
		return 0;
	}
	if (udptl_get_len(b, len, &pos, &n))
		return -1;
	for (int i = 0; i < n; i++) {
		const uint8_t *p;
		int pl;
		if (udptl_get_open(b, len, &pos, &p, &pl) || pl > UDPTL_MAX_IFP)
			return -1;
		if (u->nsec < UDPTL_MAX_SEC && pl > 0) {
			u->sec[u->nsec] = p;
			u->sec_len[u->nsec] = pl;
			u->nsec++;
		} else if (pl == 0) {
			break; /* an empty secondary: what follows is not usable in order */
		}
	}
	return pos == len ? 0 : -1;
}

static inline int udptl_put_len(uint8_t *b, int cap, int pos, int n)
{
	if (n < 0x80) {
		if (pos + 1 > cap)
			return -1;
		b[pos] = (uint8_t)n;
		return pos + 1;
	}
	if (n >= 0x4000 || pos + 2 > cap)
		return -1;
	b[pos] = (uint8_t)(0x80 | (n >> 8));
	b[pos + 1] = (uint8_t)n;
	return pos + 2;
}

/* A packet with primary ifp and up to nsec secondaries (newest first; the oldest are left out
 * when they do not fit in cap). Returns its length or -1. */
static int udptl_encode(uint8_t *b, int cap, uint16_t seq, const uint8_t *ifp, int ifp_len,
			const uint8_t *const *sec, const int *sec_len, int nsec)
{
	if (ifp_len < 1 || ifp_len > UDPTL_MAX_IFP || nsec < 0)
		return -1;
	int need = 2 + (ifp_len < 0x80 ? 1 : 2) + ifp_len + 2, k;
	if (need > cap)
		return -1;
	for (k = 0; k < nsec && k < 0x7f; k++) {
		if (sec_len[k] < 1 || sec_len[k] > UDPTL_MAX_IFP)
			break;
		int add = (sec_len[k] < 0x80 ? 1 : 2) + sec_len[k];
		if (need + add > cap)
			break;
		need += add;
	}
	b[0] = (uint8_t)(seq >> 8);
	b[1] = (uint8_t)seq;
	int pos = udptl_put_len(b, cap, 2, ifp_len);
	memcpy(b + pos, ifp, (size_t)ifp_len);
	pos += ifp_len;
	b[pos++] = 0x00; /* error-recovery: secondary-ifp-packets */
	b[pos++] = (uint8_t)k;
	for (int i = 0; i < k; i++) {
		pos = udptl_put_len(b, cap, pos, sec_len[i]);
		memcpy(b + pos, sec[i], (size_t)sec_len[i]);
		pos += sec_len[i];
	}
	return pos;
}

#endif
