/*
 * media_codec.h: G.711 A-law and mu-law (ITU-T G.711) by table, and the DSP the media engine
 * runs per stream: Goertzel DTMF detection with ITU-T Q.24 limits, block energy.
 *
 * Tables are computed once (me_codec_init) from the reference segment algorithms: encoding
 * indexes by the top 13 (A-law) or 14 (mu-law) bits of the sample, decoding by the byte.
 */
#ifndef HPBX_MEDIA_CODEC_H
#define HPBX_MEDIA_CODEC_H

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define ME_PCMA 0
#define ME_PCMU 1
#define ME_G722 2   /* only with spandsp (HPBX_G722): stateful, see me_g722_* */
#define ME_SILENCE_PCMA 0xD5
#define ME_SILENCE_PCMU 0xFF

static int16_t me_alaw_dec[256], me_ulaw_dec[256];
static uint8_t me_alaw_enc[8192], me_ulaw_enc[16384];
static pthread_once_t me_codec_once = PTHREAD_ONCE_INIT;

static uint8_t me_ref_lin2alaw(int pcm)
{
	static const int seg_aend[8] = {0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF};
	int mask, seg;
	pcm >>= 3;
	if (pcm >= 0) {
		mask = 0xD5;
	} else {
		mask = 0x55;
		pcm = -pcm - 1;
	}
	for (seg = 0; seg < 8 && pcm > seg_aend[seg]; seg++)
		;
	if (seg >= 8)
		return (uint8_t)(0x7F ^ mask);
	int aval = seg << 4;
	aval |= seg < 2 ? (pcm >> 1) & 0xF : (pcm >> seg) & 0xF;
	return (uint8_t)(aval ^ mask);
}

static int me_ref_alaw2lin(uint8_t a)
{
	a ^= 0x55;
	int t = (a & 0xF) << 4;
	int seg = (a & 0x70) >> 4;
	if (seg == 0)
		t += 8;
	else if (seg == 1)
		t += 0x108;
	else
		t = (t + 0x108) << (seg - 1);
	return (a & 0x80) ? t : -t;
}

static uint8_t me_ref_lin2ulaw(int pcm)
{
	static const int seg_uend[8] = {0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF};
	int mask, seg;
	pcm >>= 2;
	if (pcm < 0) {
		pcm = -pcm;
		mask = 0x7F;
	} else {
		mask = 0xFF;
	}
	if (pcm > 8159)
		pcm = 8159;
	pcm += 0x84 >> 2;
	for (seg = 0; seg < 8 && pcm > seg_uend[seg]; seg++)
		;
	if (seg >= 8)
		return (uint8_t)(0x7F ^ mask);
	return (uint8_t)(((seg << 4) | ((pcm >> (seg + 1)) & 0xF)) ^ mask);
}

static int me_ref_ulaw2lin(uint8_t u)
{
	u = (uint8_t)~u;
	int t = ((u & 0xF) << 3) + 0x84;
	t <<= (u & 0x70) >> 4;
	return (u & 0x80) ? (0x84 - t) : (t - 0x84);
}

static void me_codec_build(void)
{
	for (int i = 0; i < 256; i++) {
		me_alaw_dec[i] = (int16_t)me_ref_alaw2lin((uint8_t)i);
		me_ulaw_dec[i] = (int16_t)me_ref_ulaw2lin((uint8_t)i);
	}
	for (int i = 0; i < 8192; i++)
		me_alaw_enc[i] = me_ref_lin2alaw((int16_t)(uint16_t)(i << 3));
	for (int i = 0; i < 16384; i++)
		me_ulaw_enc[i] = me_ref_lin2ulaw((int16_t)(uint16_t)(i << 2));
}

static inline void me_codec_init(void)
{
	pthread_once(&me_codec_once, me_codec_build);
}

static inline uint8_t me_enc1(int codec, int16_t s)
{
	return codec == ME_PCMA ? me_alaw_enc[(uint16_t)s >> 3] : me_ulaw_enc[(uint16_t)s >> 2];
}

static void me_encode(int codec, const int16_t *in, uint8_t *out, int n)
{
	if (codec == ME_PCMA)
		for (int i = 0; i < n; i++)
			out[i] = me_alaw_enc[(uint16_t)in[i] >> 3];
	else
		for (int i = 0; i < n; i++)
			out[i] = me_ulaw_enc[(uint16_t)in[i] >> 2];
}

static void me_decode(int codec, const uint8_t *in, int16_t *out, int n)
{
	const int16_t *t = codec == ME_PCMA ? me_alaw_dec : me_ulaw_dec;
	for (int i = 0; i < n; i++)
		out[i] = t[in[i]];
}

static inline uint8_t me_silence_byte(int codec)
{
	return codec == ME_PCMA ? ME_SILENCE_PCMA : ME_SILENCE_PCMU;
}

/* ------------------------------------------------------------------ G.722 */

/*
 * G.722 at 64 kbit/s through spandsp, in its 8 kHz mode: one byte per 8 kHz sample, so a
 * frame has the size and RTP clock of G.711 (RFC 3551: G.722's RTP clock is 8000). The
 * codec is adaptive (ADPCM): every stream needs its own encoder or decoder state.
 */
#ifdef HPBX_G722
#include <spandsp/telephony.h>
#include <spandsp/g722.h>
#define ME_NCODECS 3

static inline g722_encode_state_t *me_g722_enc_new(void)
{
	return g722_encode_init(NULL, 64000, G722_SAMPLE_RATE_8000);
}

static inline g722_decode_state_t *me_g722_dec_new(void)
{
	return g722_decode_init(NULL, 64000, G722_SAMPLE_RATE_8000);
}
#else
#define ME_NCODECS 2
typedef struct g722_encode_state_s g722_encode_state_t;
typedef struct g722_decode_state_s g722_decode_state_t;
#endif

/* ------------------------------------------------------------------ in-band DTMF */

/*
 * Goertzel over blocks of 102 samples (12.75 ms) at the eight DTMF frequencies. A block holds a
 * digit when (ITU-T Q.24 / the limits spandsp uses):
 *   - both the strongest row and column tone are at least ME_DTMF_MIN_DBM0 (-30 dBm0 each);
 *   - twist: the high (column) tone at most 4 dB above, at most 8 dB below the low one;
 *   - every other tone of each group is 8 dB below the strongest of its group;
 *   - the two tones carry at least 82 % of the block's energy (speech and music spread theirs).
 * A digit starts after two consecutive blocks agree (>= 25 ms) and ends after two blocks
 * without it, so a digit of 40 ms or longer with 40 ms pauses is heard exactly once.
 */
#define ME_DTMF_N 102
#define ME_DTMF_TWIST_HIGH 2.512f   /* 4 dB */
#define ME_DTMF_TWIST_LOW 6.310f    /* 8 dB */
#define ME_DTMF_REL_PEAK 6.310f     /* 8 dB */
#define ME_DTMF_TO_TOTAL 0.82f
/* mean square of a -30 dBm0 sine: 0 dBm0 = amplitude 32767 * 10^(-3.14/20) (G.711 overload
 * at +3.14 dBm0) */
#define ME_DTMF_MIN_MS (0.5f * 22776.0f * 22776.0f * 0.001f)

static const float me_dtmf_freq[8] = {697, 770, 852, 941, 1209, 1336, 1477, 1633};
static const char me_dtmf_chars[16] = {'1', '2', '3', 'A', '4', '5', '6', 'B',
				       '7', '8', '9', 'C', '*', '0', '#', 'D'};
static float me_dtmf_coef[8];
static pthread_once_t me_dtmf_once = PTHREAD_ONCE_INIT;

static void me_dtmf_build(void)
{
	for (int i = 0; i < 8; i++)
		me_dtmf_coef[i] = 2.0f * cosf(2.0f * (float)M_PI * me_dtmf_freq[i] / 8000.0f);
}

typedef struct {
	float v1[8], v2[8];
	float energy;
	uint16_t n;        /* samples in the current block */
	int8_t last_hit;   /* digit code of the previous block, -1 none */
	int8_t in_digit;   /* digit being heard, -1 none */
	uint8_t miss;      /* consecutive blocks without in_digit */
	uint32_t blocks;   /* blocks since in_digit started */
} me_dtmf_det;

static void me_dtmf_det_init(me_dtmf_det *d)
{
	pthread_once(&me_dtmf_once, me_dtmf_build);
	memset(d, 0, sizeof *d);
	d->last_hit = -1;
	d->in_digit = -1;
}

/* Classify one finished block; returns the digit code 0-15 (index in me_dtmf_chars) or -1. */
static int me_dtmf_block(me_dtmf_det *d)
{
	float p[8];
	const float n2 = (float)ME_DTMF_N * (float)ME_DTMF_N;
	for (int i = 0; i < 8; i++) {
		float a = d->v1[i], b = d->v2[i];
		/* |X(f)|^2 scaled to the tone's mean square (A^2 / 2) */
		p[i] = (a * a + b * b - a * b * me_dtmf_coef[i]) * 2.0f / n2;
		d->v1[i] = d->v2[i] = 0;
	}
	float ms = d->energy / ME_DTMF_N;
	d->energy = 0;
	int r = 0, c = 4;
	for (int i = 1; i < 4; i++) {
		if (p[i] > p[r])
			r = i;
		if (p[4 + i] > p[c])
			c = 4 + i;
	}
	if (p[r] < ME_DTMF_MIN_MS || p[c] < ME_DTMF_MIN_MS)
		return -1;
	if (p[c] > p[r] * ME_DTMF_TWIST_HIGH || p[r] > p[c] * ME_DTMF_TWIST_LOW)
		return -1;
	for (int i = 0; i < 4; i++) {
		if (i != r && p[i] * ME_DTMF_REL_PEAK > p[r])
			return -1;
		if (4 + i != c && p[4 + i] * ME_DTMF_REL_PEAK > p[c])
			return -1;
	}
	if (p[r] + p[c] < ME_DTMF_TO_TOTAL * ms)
		return -1;
	return r * 4 + (c - 4);
}

/*
 * Feed samples; calls back on(ctx, code, duration_ms) once per digit, when it ends (so the
 * duration is known). started(ctx, code) is called when it is first confirmed (barge-in).
 */
static void me_dtmf_feed(me_dtmf_det *d, const int16_t *x, int n, void (*started)(void *, int),
			 void (*ended)(void *, int, int), void *ctx)
{
	for (int k = 0; k < n; k++) {
		float s = x[k];
		d->energy += s * s;
		for (int i = 0; i < 8; i++) {
			float v0 = me_dtmf_coef[i] * d->v1[i] - d->v2[i] + s;
			d->v2[i] = d->v1[i];
			d->v1[i] = v0;
		}
		if (++d->n < ME_DTMF_N)
			continue;
		d->n = 0;
		int hit = me_dtmf_block(d);
		if (d->in_digit >= 0) {
			if (hit == d->in_digit) {
				d->miss = 0;
				d->blocks++;
			} else if (++d->miss >= 2) {
				ended(ctx, d->in_digit, (int)((d->blocks * ME_DTMF_N) / 8));
				d->in_digit = -1;
			}
		} else if (hit >= 0 && hit == d->last_hit) {
			d->in_digit = (int8_t)hit;
			d->blocks = 2;
			d->miss = 0;
			started(ctx, hit);
		}
		d->last_hit = (int8_t)hit;
	}
}

/* Mean square of n samples (energy per sample). */
static inline float me_mean_square(const int16_t *x, int n)
{
	float e = 0;
	for (int i = 0; i < n; i++)
		e += (float)x[i] * x[i];
	return n ? e / n : 0;
}

#endif
