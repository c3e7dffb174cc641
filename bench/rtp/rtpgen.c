/*
 * rtpgen: paced RTP sender and receiver for bench/bench_relay.py (built at run time into bench/out/).
 *
 * Two UDP sockets play the two ends of every call: "A" (--porta) and "B" (--portb). Each end
 * sends from the socket it receives on, so a relay that latches onto sources works. The map
 * file has one stream per line, "A|B IP PORT": stream i is sent from that socket to IP:PORT.
 * Every stream sends --pps packets/s of a 12-byte RTP header plus --payload bytes; streams are
 * spread over the packet interval in 1 ms ticks and sent in sendmmsg batches. The payload
 * starts with the send time (CLOCK_REALTIME ns), the stream id and the sequence number; the
 * receiver takes the kernel receive timestamp (SO_TIMESTAMPNS) for the one-way latency.
 *
 * Bounded: sends for --secs (at most 600 s), drains for --drain-ms, prints one JSON object.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_PAYLOAD 1200
#define TX_BATCH 8 /* one send timestamp per batch: small batches keep the latency exact */
#define RX_BATCH 64
#define LAT_BUCKETS 1000000 /* 1 us buckets up to 1 s; later arrivals land in the last one */

typedef struct {
	int side; /* 0 = A, 1 = B */
	struct sockaddr_in to;
	uint16_t seq;
	uint32_t ts;
} stream_t;

static stream_t *streams;
static int nstreams;
static int socks[2];
static int pps = 50, payload = 160, drain_ms = 1000;
static double secs = 8, warmup = 2;
static atomic_int rx_done;

static uint64_t sent, send_fail, late_ticks, worst_lag_us, nticks;
static int64_t warm_after_ns; /* CLOCK_REALTIME: packets sent after this count for latency */
static uint64_t got, got_bad, got_late_ts, lat_count;
static uint64_t *per_stream;
static uint32_t *lat_hist;
static double send_cpu, recv_cpu;

static int64_t clock_ns(clockid_t c)
{
	struct timespec t;
	clock_gettime(c, &t);
	return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static double my_cpu(void)
{
	struct rusage u;
	getrusage(RUSAGE_THREAD, &u);
	return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

static void fail(const char *what)
{
	perror(what);
	exit(1);
}

static int open_end(const char *ip, int port)
{
	int s = socket(AF_INET, SOCK_DGRAM, 0), on = 1, rx = 16 << 20, tx = 4 << 20;
	if (s < 0)
		fail("socket");
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
	/* large buffers: the generator must not be where packets are lost */
	if (setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &rx, sizeof rx) < 0)
		setsockopt(s, SOL_SOCKET, SO_RCVBUF, &rx, sizeof rx);
	if (setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, &tx, sizeof tx) < 0)
		setsockopt(s, SOL_SOCKET, SO_SNDBUF, &tx, sizeof tx);
	setsockopt(s, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	if (inet_pton(AF_INET, ip, &a.sin_addr) != 1)
		fail("address");
	if (bind(s, (struct sockaddr *)&a, sizeof a) < 0)
		fail("bind");
	return s;
}

static inline void be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static inline uint32_t rd32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void *send_loop(void *unused)
{
	(void)unused;
	const int64_t tick = 1000000;
	int slots = (int)(1000000000LL / pps / tick);
	if (slots < 1)
		slots = 1;
	/* streams of slot s are s, s + slots, s + 2*slots, ... */
	static uint8_t pkt[TX_BATCH][12 + MAX_PAYLOAD];
	struct mmsghdr mh[TX_BATCH];
	struct iovec iov[TX_BATCH];
	int ids[TX_BATCH];
	for (int i = 0; i < TX_BATCH; i++)
		memset(pkt[i] + 12, 0xff, payload);
	int64_t total = (int64_t)(secs * 1000.0);
	int64_t start = clock_ns(CLOCK_MONOTONIC) + 5 * tick;
	warm_after_ns = clock_ns(CLOCK_REALTIME) + 5 * tick + (int64_t)(warmup * 1e9);
	double c0 = my_cpu();
	for (int64_t t = 0; t < total; t++) {
		int64_t due = start + t * tick, now = clock_ns(CLOCK_MONOTONIC);
		if (now < due) {
			struct timespec w = {.tv_sec = due / 1000000000LL, .tv_nsec = due % 1000000000LL};
			while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &w, NULL) == EINTR)
				;
		} else if ((uint64_t)(now - due) / 1000 > 1000) {
			late_ticks++;
			if ((uint64_t)(now - due) / 1000 > worst_lag_us)
				worst_lag_us = (uint64_t)(now - due) / 1000;
		}
		int slot = (int)(t % slots);
		for (int side = 0; side < 2; side++) {
			int n = 0;
			for (int id = slot;; id += slots) {
				int last = id >= nstreams;
				if (!last && streams[id].side == side)
					ids[n++] = id;
				if (n && (n == TX_BATCH || last)) {
					int64_t stamp = clock_ns(CLOCK_REALTIME);
					for (int q = 0; q < n; q++) {
						stream_t *st = &streams[ids[q]];
						uint8_t *p = pkt[q];
						p[0] = 0x80;
						p[1] = 0;
						p[2] = (uint8_t)(st->seq >> 8);
						p[3] = (uint8_t)st->seq;
						be32(p + 4, st->ts);
						be32(p + 8, 0x52470000u ^ (uint32_t)ids[q]);
						be32(p + 12, (uint32_t)((uint64_t)stamp >> 32));
						be32(p + 16, (uint32_t)stamp);
						be32(p + 20, (uint32_t)ids[q]);
						be32(p + 24, st->seq);
						iov[q].iov_base = p;
						iov[q].iov_len = 12 + payload;
						memset(&mh[q], 0, sizeof mh[q]);
						mh[q].msg_hdr.msg_iov = &iov[q];
						mh[q].msg_hdr.msg_iovlen = 1;
						mh[q].msg_hdr.msg_name = &st->to;
						mh[q].msg_hdr.msg_namelen = sizeof st->to;
						st->seq++;
						st->ts += 8000 / pps;
					}
					int done = 0;
					while (done < n) {
						int r = sendmmsg(socks[side], mh + done, n - done, 0);
						if (r < 0 && errno == EINTR)
							continue;
						if (r <= 0) {
							send_fail += n - done;
							break;
						}
						done += r;
					}
					sent += done;
					n = 0;
				}
				if (last)
					break;
			}
		}
	}
	nticks = total;
	send_cpu = my_cpu() - c0;
	return NULL;
}

static void *recv_loop(void *unused)
{
	(void)unused;
	static uint8_t buf[RX_BATCH][2048];
	static char ctl[RX_BATCH][128];
	struct mmsghdr mh[RX_BATCH];
	struct iovec iov[RX_BATCH];
	struct pollfd pf[2] = {{.fd = socks[0], .events = POLLIN}, {.fd = socks[1], .events = POLLIN}};
	double c0 = my_cpu();
	while (!atomic_load(&rx_done)) {
		if (poll(pf, 2, 20) <= 0)
			continue;
		for (int side = 0; side < 2; side++) {
			if (!(pf[side].revents & POLLIN))
				continue;
			int r;
			do {
				for (int i = 0; i < RX_BATCH; i++) {
					iov[i].iov_base = buf[i];
					iov[i].iov_len = sizeof buf[i];
					memset(&mh[i].msg_hdr, 0, sizeof mh[i].msg_hdr);
					mh[i].msg_hdr.msg_iov = &iov[i];
					mh[i].msg_hdr.msg_iovlen = 1;
					mh[i].msg_hdr.msg_control = ctl[i];
					mh[i].msg_hdr.msg_controllen = sizeof ctl[i];
				}
				r = recvmmsg(socks[side], mh, RX_BATCH, MSG_DONTWAIT, NULL);
				for (int i = 0; i < r; i++) {
					const uint8_t *p = buf[i];
					if (mh[i].msg_len < 28 || rd32(p + 20) >= (uint32_t)nstreams) {
						got_bad++;
						continue;
					}
					got++;
					per_stream[rd32(p + 20)]++;
					int64_t tx = (int64_t)(((uint64_t)rd32(p + 12) << 32) | rd32(p + 16));
					int64_t rx = 0;
					struct cmsghdr *c;
					for (c = CMSG_FIRSTHDR(&mh[i].msg_hdr); c; c = CMSG_NXTHDR(&mh[i].msg_hdr, c))
						if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
							struct timespec ts;
							memcpy(&ts, CMSG_DATA(c), sizeof ts);
							rx = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
						}
					if (!rx)
						rx = clock_ns(CLOCK_REALTIME);
					if (tx < warm_after_ns)
						continue;
					int64_t us = (rx - tx) / 1000;
					if (us < 0)
						us = 0;
					if (us >= LAT_BUCKETS) {
						us = LAT_BUCKETS - 1;
						got_late_ts++;
					}
					lat_hist[us]++;
					lat_count++;
				}
			} while (r == RX_BATCH);
		}
	}
	recv_cpu = my_cpu() - c0;
	return NULL;
}

static uint64_t percentile(double q)
{
	if (!lat_count)
		return 0;
	uint64_t rank = (uint64_t)(q * (double)(lat_count - 1)) + 1, seen = 0;
	for (int i = 0; i < LAT_BUCKETS; i++) {
		seen += lat_hist[i];
		if (seen >= rank)
			return (uint64_t)i;
	}
	return LAT_BUCKETS - 1;
}

int main(int argc, char **argv)
{
	const char *mapfile = NULL, *ip = "127.0.0.1", *out = NULL;
	int porta = 39000, portb = 39002;
	static const struct option opts[] = {
		{"map", 1, 0, 'm'}, {"ip", 1, 0, 'i'}, {"porta", 1, 0, 'a'}, {"portb", 1, 0, 'b'},
		{"pps", 1, 0, 'p'}, {"payload", 1, 0, 'l'}, {"secs", 1, 0, 's'}, {"warmup", 1, 0, 'w'},
		{"drain-ms", 1, 0, 'd'}, {"json", 1, 0, 'j'}, {0, 0, 0, 0}};
	for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
		switch (c) {
		case 'm': mapfile = optarg; break;
		case 'i': ip = optarg; break;
		case 'a': porta = atoi(optarg); break;
		case 'b': portb = atoi(optarg); break;
		case 'p': pps = atoi(optarg); break;
		case 'l': payload = atoi(optarg); break;
		case 's': secs = atof(optarg); break;
		case 'w': warmup = atof(optarg); break;
		case 'd': drain_ms = atoi(optarg); break;
		case 'j': out = optarg; break;
		default:
			fprintf(stderr, "usage: rtpgen --map FILE [--ip IP] [--porta P] [--portb P] [--pps 50]"
					" [--payload 160] [--secs 8] [--warmup 2] [--drain-ms 1000] [--json FILE]\n");
			return 2;
		}
	}
	if (!mapfile || pps < 1 || pps > 1000 || payload < 16 || payload > MAX_PAYLOAD || secs <= 0 ||
	    secs > 600 || warmup < 0 || warmup >= secs || drain_ms < 0 || drain_ms > 10000) {
		fprintf(stderr, "rtpgen: bad or missing arguments\n");
		return 2;
	}
	FILE *f = fopen(mapfile, "r");
	if (!f)
		fail(mapfile);
	int cap = 256;
	streams = calloc(cap, sizeof *streams);
	char side[4], host[64];
	int port;
	while (fscanf(f, "%3s %63s %d", side, host, &port) == 3) {
		if (nstreams == cap)
			streams = realloc(streams, (cap *= 2) * sizeof *streams);
		stream_t *st = &streams[nstreams];
		memset(st, 0, sizeof *st);
		st->side = side[0] == 'B';
		st->to.sin_family = AF_INET;
		st->to.sin_port = htons((uint16_t)port);
		if (inet_pton(AF_INET, host, &st->to.sin_addr) != 1) {
			fprintf(stderr, "rtpgen: bad address %s\n", host);
			return 1;
		}
		st->seq = (uint16_t)(nstreams * 31u);
		nstreams++;
	}
	fclose(f);
	if (!nstreams) {
		fprintf(stderr, "rtpgen: empty map\n");
		return 1;
	}
	per_stream = calloc(nstreams, sizeof *per_stream);
	lat_hist = calloc(LAT_BUCKETS, sizeof *lat_hist);
	socks[0] = open_end(ip, porta);
	socks[1] = open_end(ip, portb);

	pthread_t rx, tx;
	pthread_create(&rx, NULL, recv_loop, NULL);
	int64_t t0 = clock_ns(CLOCK_MONOTONIC);
	pthread_create(&tx, NULL, send_loop, NULL);
	pthread_join(tx, NULL);
	double wall = (clock_ns(CLOCK_MONOTONIC) - t0) / 1e9;
	usleep((useconds_t)drain_ms * 1000);
	atomic_store(&rx_done, 1);
	pthread_join(rx, NULL);

	uint64_t silent = 0;
	for (int i = 0; i < nstreams; i++)
		silent += per_stream[i] == 0;
	uint64_t lost = sent > got ? sent - got : 0;
	FILE *o = out ? fopen(out, "w") : stdout;
	if (!o)
		fail(out);
	fprintf(o,
		"{\"streams\":%d,\"secs\":%.3f,\"sent\":%" PRIu64 ",\"send_fail\":%" PRIu64 ",\"received\":%" PRIu64
		",\"lost\":%" PRIu64 ",\"loss_pct\":%.4f,\"offered_pps\":%.1f,\"rx_pps\":%.1f,\"silent_streams\":%" PRIu64
		",\"bad\":%" PRIu64 ",\"lat_n\":%" PRIu64 ",\"p50_us\":%" PRIu64 ",\"p90_us\":%" PRIu64 ",\"p99_us\":%" PRIu64
		",\"p999_us\":%" PRIu64 ",\"max_us\":%" PRIu64 ",\"over_1s\":%" PRIu64 ",\"late_ticks\":%" PRIu64
		",\"ticks\":%" PRIu64 ",\"worst_lag_us\":%" PRIu64 ",\"send_cpu_pct\":%.1f,\"recv_cpu_pct\":%.1f}\n",
		nstreams, wall, sent, send_fail, got, lost, sent ? 100.0 * lost / sent : 0.0, sent / wall, got / wall,
		silent, got_bad, lat_count, percentile(0.5), percentile(0.9), percentile(0.99), percentile(0.999),
		percentile(1.0), got_late_ts, late_ticks, nticks, worst_lag_us, 100.0 * send_cpu / wall,
		100.0 * recv_cpu / (wall + drain_ms / 1000.0));
	if (o != stdout)
		fclose(o);
	return 0;
}
