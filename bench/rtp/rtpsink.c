/*
 * rtpsink: the receiving end of bench/bench_media.py (built at run time into bench/out/).
 *
 * One UDP socket takes every player's stream; a stream is told apart by its source port (a
 * media server sends each call's audio from that call's own port). Every datagram gets its
 * kernel receive time (SO_TIMESTAMPNS). Inside the measuring window it records per stream the
 * gap since that stream's previous packet, and prints one JSON object: packets, streams seen,
 * the deviation of the gaps from --ptime-ms (p50/p99/max, 10 us buckets), missed slots (a gap
 * of 1.5 ptime or more), bursts (a gap under half the ptime), sequence gaps.
 *
 * The window starts --warmup s after start, or with --go when a line arrives on stdin (the
 * bench says so once every player runs); it lasts --secs. Bounded: at most 600 s waiting for
 * the line, then prints and exits.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define BUCKETS 10000 /* 10 us buckets up to 100 ms */

typedef struct {
	int64_t last_ns;
	uint16_t seq;
	uint8_t seen;
	uint64_t packets;
} stream_t;

static int64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_REALTIME, &t);
	return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv)
{
	const char *ip = "127.0.0.1";
	int port = 0, ptime_ms = 20, go = 0;
	double secs = 10, warmup = 2;
	static struct option opts[] = {{"ip", 1, 0, 'i'}, {"port", 1, 0, 'p'}, {"secs", 1, 0, 's'},
				       {"warmup", 1, 0, 'w'}, {"ptime-ms", 1, 0, 't'}, {"go", 0, 0, 'g'},
				       {0, 0, 0, 0}};
	for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
		switch (c) {
		case 'i': ip = optarg; break;
		case 'p': port = atoi(optarg); break;
		case 's': secs = atof(optarg); break;
		case 'w': warmup = atof(optarg); break;
		case 't': ptime_ms = atoi(optarg); break;
		case 'g': go = 1; break;
		default:
			fprintf(stderr, "usage: rtpsink --port P [--ip IP] [--secs 10] [--warmup 2] [--ptime-ms 20]\n");
			return 2;
		}
	}
	if (port <= 0 || secs <= 0 || secs > 600 || ptime_ms < 1) {
		fprintf(stderr, "rtpsink: bad arguments\n");
		return 2;
	}
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	int big = 64 << 20, on = 1;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
	setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	inet_pton(AF_INET, ip, &a.sin_addr);
	if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
		perror("rtpsink: bind");
		return 1;
	}
	printf("ready\n");
	fflush(stdout);
	stream_t *st = calloc(65536, sizeof *st);
	uint64_t *hist = calloc(BUCKETS, sizeof *hist);
	static uint8_t bufs[BATCH][2048];
	static char ctl[BATCH][256];
	struct mmsghdr m[BATCH];
	struct iovec iov[BATCH];
	struct sockaddr_in src[BATCH];
	int64_t start = now_ns(), warm = start + (int64_t)(warmup * 1e9), end = start + (int64_t)(secs * 1e9);
	if (go) {
		warm = INT64_MAX;
		end = start + 600000000000LL;
	}
	int64_t pt = (int64_t)ptime_ms * 1000000LL;
	uint64_t packets = 0, window_packets = 0, missed = 0, bursts = 0, seq_gaps = 0, gaps = 0;
	for (;;) {
		int64_t t = now_ns();
		if (t >= end)
			break;
		struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
		if (poll(p, go ? 2 : 1, (int)((end - t) / 1000000) + 1) <= 0)
			continue;
		if (go && (p[1].revents & (POLLIN | POLLHUP))) {
			char line[64];
			if (read(0, line, sizeof line) < 0) {
				/* the bench is gone: the window starts anyway */
			}
			go = 0;
			warm = now_ns();
			end = warm + (int64_t)(secs * 1e9);
		}
		for (int i = 0; i < BATCH; i++) {
			iov[i].iov_base = bufs[i];
			iov[i].iov_len = sizeof bufs[i];
			memset(&m[i].msg_hdr, 0, sizeof m[i].msg_hdr);
			m[i].msg_hdr.msg_iov = &iov[i];
			m[i].msg_hdr.msg_iovlen = 1;
			m[i].msg_hdr.msg_name = &src[i];
			m[i].msg_hdr.msg_namelen = sizeof src[i];
			m[i].msg_hdr.msg_control = ctl[i];
			m[i].msg_hdr.msg_controllen = sizeof ctl[i];
		}
		int n = recvmmsg(fd, m, BATCH, MSG_DONTWAIT, NULL);
		for (int i = 0; i < n; i++) {
			int64_t rx = now_ns();
			for (struct cmsghdr *c = CMSG_FIRSTHDR(&m[i].msg_hdr); c; c = CMSG_NXTHDR(&m[i].msg_hdr, c))
				if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_TIMESTAMPNS) {
					struct timespec ts;
					memcpy(&ts, CMSG_DATA(c), sizeof ts);
					rx = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
				}
			packets++;
			if (m[i].msg_len < 12)
				continue;
			stream_t *s = &st[ntohs(src[i].sin_port)];
			uint16_t seq = (uint16_t)((bufs[i][2] << 8) | bufs[i][3]);
			if (rx >= warm) {
				window_packets++;
				if (s->seen && s->last_ns >= warm) {
					int64_t g = rx - s->last_ns, dev = g > pt ? g - pt : pt - g;
					int b = (int)(dev / 10000);
					hist[b < BUCKETS ? b : BUCKETS - 1]++;
					gaps++;
					if (g * 2 >= pt * 3)
						missed++;
					if (g * 2 < pt)
						bursts++;
					if ((uint16_t)(seq - s->seq) != 1)
						seq_gaps++;
				}
				s->packets++;
			}
			s->seen = 1;
			s->seq = seq;
			s->last_ns = rx;
		}
	}
	uint64_t nstreams = 0, min_pk = UINT64_MAX;
	for (int i = 0; i < 65536; i++)
		if (st[i].packets) {
			nstreams++;
			if (st[i].packets < min_pk)
				min_pk = st[i].packets;
		}
	double p50 = 0, p99 = 0, mx = 0;
	uint64_t acc = 0;
	for (int b = 0; b < BUCKETS; b++) {
		if (!hist[b])
			continue;
		acc += hist[b];
		if (!p50 && acc * 2 >= gaps)
			p50 = (b + 1) * 0.01;
		if (!p99 && acc * 100 >= gaps * 99)
			p99 = (b + 1) * 0.01;
		mx = (b + 1) * 0.01;
	}
	printf("{\"packets\": %lu, \"window_packets\": %lu, \"streams\": %lu, \"min_stream_packets\": %lu, "
	       "\"gaps\": %lu, \"dev_p50_ms\": %.2f, \"dev_p99_ms\": %.2f, \"dev_max_ms\": %.2f, "
	       "\"missed_slots\": %lu, \"bursts\": %lu, \"seq_gaps\": %lu}\n",
	       (unsigned long)packets, (unsigned long)window_packets, (unsigned long)nstreams,
	       (unsigned long)(nstreams ? min_pk : 0), (unsigned long)gaps, p50, p99, mx,
	       (unsigned long)missed, (unsigned long)bursts, (unsigned long)seq_gaps);
	return 0;
}
