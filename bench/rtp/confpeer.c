/*
 * confpeer: every participant of bench/bench_conference.py on one UDP socket (built at run time
 * into bench/out/).
 *
 * The map file has one destination port per line (on --ip): participant i sends --pps packets/s
 * of PCMA (a tone of its own, 160 bytes every 20 ms, streams spread over the interval in 1 ms
 * ticks, sendmmsg batches) from this socket to that port; a relay that latches onto sources
 * sends the participant's mix back to this socket, and the stream is told apart by its source
 * port. Inside the window (--warmup s after start, --secs long) it records per stream the gap
 * since the previous packet (kernel receive time, SO_TIMESTAMPNS): a missed slot is a gap of
 * 1.5 ptime or more, a sequence gap a seq that is not the previous + 1. Prints one JSON object.
 * Bounded: --secs at most 600.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define FRAME 172

typedef struct {
	int64_t last_ns;
	uint16_t seq;
	uint8_t seen;
	uint64_t packets, missed, seq_gaps;
	int64_t max_gap_ns;
} rx_t;

static rx_t rx[65536];
static int sock, n, pps = 50;
static uint16_t *dst;
static struct in_addr ip;
static double secs = 8, warmup = 2;
static atomic_int done;
static uint64_t sent, send_fail;
static uint8_t tones[8][160];

static int64_t clock_ns(clockid_t c)
{
	struct timespec t;
	clock_gettime(c, &t);
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static uint8_t alaw(int pcm)
{
	int sign = pcm >= 0 ? 0x80 : 0, mag = pcm >= 0 ? pcm : -pcm - 1, seg = 0;
	if (mag > 32767)
		mag = 32767;
	for (int v = mag >> 8; v; v >>= 1)
		seg++;
	int m = seg ? (mag >> (seg + 3)) & 0x0f : (mag >> 4) & 0x0f;
	return (uint8_t)((sign | (seg << 4) | m) ^ 0x55);
}

static void *sender(void *arg)
{
	(void)arg;
	uint16_t *seq = calloc(n, sizeof *seq);
	uint32_t *ts = calloc(n, sizeof *ts);
	uint8_t (*pkt)[FRAME] = malloc((size_t)BATCH * FRAME);
	struct mmsghdr mh[BATCH];
	struct iovec iov[BATCH];
	struct sockaddr_in to[BATCH];
	int ticks = 1000 / pps;
	int64_t t0 = clock_ns(CLOCK_MONOTONIC), end = t0 + (int64_t)(secs + warmup) * 1000000000;
	for (int64_t tick = 0;; tick++) {
		int64_t due = t0 + tick * 1000000;
		int64_t now = clock_ns(CLOCK_MONOTONIC);
		if (now >= end)
			break;
		if (due > now) {
			struct timespec w = {0, due - now};
			nanosleep(&w, NULL);
		}
		int k = 0;
		for (int i = (int)(tick % ticks); i < n; i += ticks) {
			uint8_t *p = pkt[k];
			p[0] = 0x80;
			p[1] = 8;
			p[2] = (uint8_t)(seq[i] >> 8);
			p[3] = (uint8_t)seq[i];
			uint32_t t = ts[i], s = 0x43460000u ^ (uint32_t)i;
			p[4] = t >> 24, p[5] = t >> 16, p[6] = t >> 8, p[7] = t;
			p[8] = s >> 24, p[9] = s >> 16, p[10] = s >> 8, p[11] = s;
			memcpy(p + 12, tones[i % 8], 160);
			seq[i]++;
			ts[i] += 160;
			memset(&to[k], 0, sizeof to[k]);
			to[k].sin_family = AF_INET;
			to[k].sin_addr = ip;
			to[k].sin_port = htons(dst[i]);
			iov[k].iov_base = p;
			iov[k].iov_len = FRAME;
			memset(&mh[k], 0, sizeof mh[k]);
			mh[k].msg_hdr.msg_name = &to[k];
			mh[k].msg_hdr.msg_namelen = sizeof to[k];
			mh[k].msg_hdr.msg_iov = &iov[k];
			mh[k].msg_hdr.msg_iovlen = 1;
			if (++k == BATCH || i + ticks >= n) {
				int r = sendmmsg(sock, mh, k, 0);
				sent += r > 0 ? (uint64_t)r : 0;
				send_fail += r < k ? (uint64_t)(k - (r > 0 ? r : 0)) : 0;
				k = 0;
			}
		}
	}
	atomic_store(&done, 1);
	free(seq);
	free(ts);
	free(pkt);
	return NULL;
}

int main(int argc, char **argv)
{
	const char *map = NULL, *host = "127.0.0.1";
	int port = 0;
	static struct option opts[] = {{"ip", 1, 0, 'i'}, {"port", 1, 0, 'p'}, {"map", 1, 0, 'm'},
				       {"secs", 1, 0, 's'}, {"warmup", 1, 0, 'w'}, {"pps", 1, 0, 'r'}, {0, 0, 0, 0}};
	for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
		if (c == 'i')
			host = optarg;
		else if (c == 'p')
			port = atoi(optarg);
		else if (c == 'm')
			map = optarg;
		else if (c == 's')
			secs = atof(optarg);
		else if (c == 'w')
			warmup = atof(optarg);
		else if (c == 'r')
			pps = atoi(optarg);
		else
			return 2;
	}
	if (!map || !port || secs <= 0 || secs > 600 || pps < 1 || pps > 1000 || !inet_aton(host, &ip)) {
		fprintf(stderr, "usage: confpeer --port P --map FILE [--ip IP] [--secs S<=600] [--warmup W] [--pps 50]\n");
		return 2;
	}
	FILE *f = fopen(map, "r");
	if (!f) {
		perror(map);
		return 1;
	}
	int cap = 1024, p;
	dst = malloc(cap * sizeof *dst);
	while (fscanf(f, "%d", &p) == 1) {
		if (n == cap)
			dst = realloc(dst, (cap *= 2) * sizeof *dst);
		dst[n++] = (uint16_t)p;
	}
	fclose(f);
	for (int t = 0; t < 8; t++)
		for (int s = 0; s < 160; s++)
			tones[t][s] = alaw((int)(6000 * sin(2 * M_PI * (300.0 + 150.0 * t) * s / 8000.0)));
	sock = socket(AF_INET, SOCK_DGRAM, 0);
	int on = 1, buf = 32 << 20;
	setsockopt(sock, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof buf);
	setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
	setsockopt(sock, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof buf);
	setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
	setsockopt(sock, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
	struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr = ip};
	if (bind(sock, (struct sockaddr *)&me, sizeof me) < 0) {
		perror("bind");
		return 1;
	}
	int64_t start = clock_ns(CLOCK_REALTIME);
	int64_t w0 = start + (int64_t)(warmup * 1e9), w1 = w0 + (int64_t)(secs * 1e9);
	int64_t slot = 1000000000 / pps;
	pthread_t th;
	pthread_create(&th, NULL, sender, NULL);
	uint8_t bufs[BATCH][256];
	char ctl[BATCH][64];
	struct mmsghdr mh[BATCH];
	struct iovec iov[BATCH];
	struct sockaddr_in from[BATCH];
	uint64_t outside = 0;
	struct pollfd pf = {sock, POLLIN, 0};
	while (!atomic_load(&done)) {
		if (poll(&pf, 1, 20) <= 0)
			continue;
		for (int i = 0; i < BATCH; i++) {
			iov[i].iov_base = bufs[i];
			iov[i].iov_len = sizeof bufs[i];
			memset(&mh[i].msg_hdr, 0, sizeof mh[i].msg_hdr);
			mh[i].msg_hdr.msg_name = &from[i];
			mh[i].msg_hdr.msg_namelen = sizeof from[i];
			mh[i].msg_hdr.msg_iov = &iov[i];
			mh[i].msg_hdr.msg_iovlen = 1;
			mh[i].msg_hdr.msg_control = ctl[i];
			mh[i].msg_hdr.msg_controllen = sizeof ctl[i];
		}
		int r = recvmmsg(sock, mh, BATCH, MSG_DONTWAIT, NULL);
		for (int i = 0; i < r; i++) {
			int64_t t = 0;
			for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh[i].msg_hdr); c; c = CMSG_NXTHDR(&mh[i].msg_hdr, c))
				if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
					struct timespec ts;
					memcpy(&ts, CMSG_DATA(c), sizeof ts);
					t = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
				}
			if (mh[i].msg_len < 12 || t < w0 || t > w1) {
				outside++;
				continue;
			}
			rx_t *s = &rx[ntohs(from[i].sin_port)];
			uint16_t seq = (uint16_t)(bufs[i][2] << 8 | bufs[i][3]);
			if (s->seen) {
				int64_t gap = t - s->last_ns;
				if (gap > s->max_gap_ns)
					s->max_gap_ns = gap;
				if (gap * 2 >= slot * 3)
					s->missed += (uint64_t)((gap + slot / 2) / slot - 1);
				if (seq != (uint16_t)(s->seq + 1))
					s->seq_gaps++;
			}
			s->seen = 1;
			s->last_ns = t;
			s->seq = seq;
			s->packets++;
		}
	}
	pthread_join(th, NULL);
	uint64_t streams = 0, packets = 0, missed = 0, seq_gaps = 0, bad_streams = 0;
	int64_t max_gap = 0;
	for (int i = 0; i < 65536; i++) {
		if (!rx[i].seen)
			continue;
		streams++;
		packets += rx[i].packets;
		missed += rx[i].missed;
		seq_gaps += rx[i].seq_gaps;
		bad_streams += rx[i].missed || rx[i].seq_gaps;
		if (rx[i].max_gap_ns > max_gap)
			max_gap = rx[i].max_gap_ns;
	}
	printf("{\"participants\":%d,\"sent\":%llu,\"send_fail\":%llu,\"streams\":%llu,\"packets\":%llu,"
	       "\"expected\":%.0f,\"missed_slots\":%llu,\"seq_gaps\":%llu,\"bad_streams\":%llu,\"max_gap_ms\":%.1f}\n",
	       n, (unsigned long long)sent, (unsigned long long)send_fail, (unsigned long long)streams,
	       (unsigned long long)packets, (double)n * pps * secs, (unsigned long long)missed,
	       (unsigned long long)seq_gaps, (unsigned long long)bad_streams, max_gap / 1e6);
	return 0;
}
