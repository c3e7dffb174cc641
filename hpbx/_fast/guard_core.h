/* The ban table of the SIP receive path: one entry per source address, looked up before a
 * datagram costs a parse or a Python object. Plain C with no Python; guard.pyx wraps it.
 *
 * An entry counts the source's messages in a fixed window (pike-like request density) and
 * holds its ban (until when, why, how many packets dropped since). A source that has
 * authenticated a user lately ("good", set from Python) may send `good_factor` times more.
 * Trusted networks are never counted nor banned; the flag is computed once per entry.
 * The table is open addressing over 16-octet addresses (IPv4 as v4-mapped), a bounded probe;
 * when the probe window is full, the least valuable entry is replaced (never a live ban while
 * an unbanned one is there), so memory is fixed however many sources a flood spoofs.
 */
#ifndef HPBX_GUARD_CORE_H
#define HPBX_GUARD_CORE_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#define GUARD_PROBE 16
#define GUARD_MAX_AGENTS 32
#define GUARD_AGENT_LEN 48
#define GUARD_MAX_TRUSTED 1024
#define GUARD_EVENTS 1024

/* why a source is banned */
enum { GUARD_NONE = 0, GUARD_FLOOD = 1, GUARD_SCANNER = 2, GUARD_AUTH = 3, GUARD_ADMIN = 4,
       GUARD_USER = 5, GUARD_REASONS = 6 };

/* what guard_check says */
enum { GUARD_PASS = 0, GUARD_DROP = 1 };

typedef struct {
    uint8_t ip[16];
    uint8_t used;
    uint8_t trusted;
    uint8_t reason;
    uint8_t pad;
    uint32_t count;          /* messages in the current window */
    double window_start;
    double banned_until;     /* wall clock; 0 = not banned */
    double good_until;       /* authenticated a user lately */
    double last_seen;
    uint64_t dropped;        /* packets dropped during the current ban */
} guard_entry;

typedef struct {
    uint8_t ip[16];
    uint8_t reason;
    double until;
} guard_event;

typedef struct {
    uint8_t net[16];
    int bits;
} guard_net;

typedef struct {
    guard_entry *slots;
    uint32_t mask;           /* capacity - 1 (capacity a power of two) */
    uint32_t used;
    uint64_t k0, k1;         /* hash key (random per process: sources cannot aim at a slot) */
    /* settings */
    int enabled;
    double window;
    uint32_t threshold;
    double ban_secs;
    uint32_t good_factor;
    int nagents;
    char agents[GUARD_MAX_AGENTS][GUARD_AGENT_LEN]; /* lower case */
    int agent_len[GUARD_MAX_AGENTS];
    int ntrusted;
    guard_net trusted[GUARD_MAX_TRUSTED];
    /* events for Python (bans that started here), a ring that overwrites when not drained */
    guard_event events[GUARD_EVENTS];
    uint32_t ev_head, ev_count;
    uint64_t ev_lost;
    /* counters */
    uint64_t checked, dropped, bans, evictions;
} guard_table;

static inline double guard_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static inline double guard_now_precise(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static inline uint64_t guard_rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

/* SipHash-1-3 over the 16 octets of an address: keyed, so a flood cannot choose colliding
 * sources that pile into one probe window */
static inline uint64_t guard_hash(const guard_table *g, const uint8_t ip[16])
{
    uint64_t v0 = 0x736f6d6570736575ULL ^ g->k0, v1 = 0x646f72616e646f6dULL ^ g->k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ g->k0, v3 = 0x7465646279746573ULL ^ g->k1;
    uint64_t m[2];
    int i;
    memcpy(m, ip, 16);
#define GUARD_ROUND \
    v0 += v1; v1 = guard_rotl(v1, 13); v1 ^= v0; v0 = guard_rotl(v0, 32); \
    v2 += v3; v3 = guard_rotl(v3, 16); v3 ^= v2; \
    v0 += v3; v3 = guard_rotl(v3, 21); v3 ^= v0; \
    v2 += v1; v1 = guard_rotl(v1, 17); v1 ^= v2; v2 = guard_rotl(v2, 32);
    for (i = 0; i < 2; i++) {
        v3 ^= m[i];
        GUARD_ROUND
        v0 ^= m[i];
    }
    v3 ^= 16ULL << 56;
    GUARD_ROUND
    v0 ^= 16ULL << 56;
    v2 ^= 0xff;
    GUARD_ROUND GUARD_ROUND GUARD_ROUND
#undef GUARD_ROUND
    return v0 ^ v1 ^ v2 ^ v3;
}

static int guard_init(guard_table *g, uint32_t capacity, uint64_t k0, uint64_t k1)
{
    uint32_t cap = 64;
    memset(g, 0, sizeof(*g));
    while (cap < capacity && cap < (1u << 30))
        cap <<= 1;
    g->slots = calloc(cap, sizeof(guard_entry));
    if (g->slots == NULL)
        return -1;
    g->mask = cap - 1;
    g->k0 = k0;
    g->k1 = k1;
    g->enabled = 1;
    g->window = 2.0;
    g->threshold = 16;
    g->ban_secs = 300.0;
    g->good_factor = 8;
    return 0;
}

static void guard_free(guard_table *g)
{
    free(g->slots);
    g->slots = NULL;
}

/* 16 octets of a socket address (IPv4 as v4-mapped); 0, or -1 for another family */
static inline int guard_key_sa(const struct sockaddr_storage *sa, uint8_t ip[16])
{
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        memset(ip, 0, 10);
        ip[10] = 0xff;
        ip[11] = 0xff;
        memcpy(ip + 12, &a->sin_addr, 4);
        return 0;
    }
    if (sa->ss_family == AF_INET6) {
        memcpy(ip, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        return 0;
    }
    return -1;
}

/* the same from a literal address text; 0, or -1 when it is none */
static int guard_key_text(const char *host, uint8_t ip[16])
{
    struct in_addr v4;
    if (inet_pton(AF_INET, host, &v4) == 1) {
        memset(ip, 0, 10);
        ip[10] = 0xff;
        ip[11] = 0xff;
        memcpy(ip + 12, &v4, 4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, ip) == 1)
        return 0;
    return -1;
}

/* the text of a key (v4-mapped shown as IPv4) */
static void guard_key_str(const uint8_t ip[16], char *out, size_t n)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(ip, mapped, 12) == 0)
        inet_ntop(AF_INET, ip + 12, out, (socklen_t)n);
    else
        inet_ntop(AF_INET6, ip, out, (socklen_t)n);
}

static int guard_in_net(const uint8_t ip[16], const guard_net *net)
{
    int full = net->bits / 8, rest = net->bits % 8;
    if (memcmp(ip, net->net, (size_t)full) != 0)
        return 0;
    if (rest) {
        uint8_t m = (uint8_t)(0xff << (8 - rest));
        if ((ip[full] & m) != (net->net[full] & m))
            return 0;
    }
    return 1;
}

static int guard_is_trusted(const guard_table *g, const uint8_t ip[16])
{
    int i;
    for (i = 0; i < g->ntrusted; i++)
        if (guard_in_net(ip, &g->trusted[i]))
            return 1;
    return 0;
}

/* an entry that holds nothing worth keeping any more */
static inline int guard_idle(const guard_table *g, const guard_entry *e, double now)
{
    return e->banned_until <= now && e->good_until <= now && now - e->window_start >= g->window;
}

/* The entry of `ip`: found, or made (create != 0); NULL when not found (create == 0). */
static guard_entry *guard_slot(guard_table *g, const uint8_t ip[16], double now, int create)
{
    uint32_t h = (uint32_t)guard_hash(g, ip), i;
    guard_entry *free_slot = NULL, *victim = NULL, *e;
    for (i = 0; i < GUARD_PROBE; i++) {
        e = &g->slots[(h + i) & g->mask];
        if (!e->used) {
            /* entries are never deleted (an idle one is reused in place): the key is not
             * further on */
            if (free_slot == NULL)
                free_slot = e;
            break;
        }
        if (memcmp(e->ip, ip, 16) == 0)
            return e;
        if (!create)
            continue;
        if (free_slot == NULL && guard_idle(g, e, now))
            free_slot = e;
        /* replace first an unbanned entry seen longest ago, then the ban that ends first */
        if (victim == NULL)
            victim = e;
        else if ((victim->banned_until > now) != (e->banned_until > now)) {
            if (e->banned_until <= now)
                victim = e;
        } else if (e->banned_until > now ? e->banned_until < victim->banned_until
                                         : e->last_seen < victim->last_seen)
            victim = e;
    }
    if (!create)
        return NULL;
    e = free_slot;
    if (e == NULL) {
        e = victim;
        g->evictions++;
    } else if (!e->used)
        g->used++;
    memset(e, 0, sizeof(*e));
    memcpy(e->ip, ip, 16);
    e->used = 1;
    e->trusted = (uint8_t)guard_is_trusted(g, ip);
    e->window_start = now;
    e->last_seen = now;
    return e;
}

static void guard_event_add(guard_table *g, const uint8_t ip[16], int reason, double until)
{
    guard_event *ev;
    if (g->ev_count == GUARD_EVENTS) {
        g->ev_head = (g->ev_head + 1) % GUARD_EVENTS;
        g->ev_count--;
        g->ev_lost++;
    }
    ev = &g->events[(g->ev_head + g->ev_count) % GUARD_EVENTS];
    memcpy(ev->ip, ip, 16);
    ev->reason = (uint8_t)reason;
    ev->until = until;
    g->ev_count++;
}

static void guard_ban_entry(guard_table *g, guard_entry *e, int reason, double until, int event)
{
    e->banned_until = until;
    e->reason = (uint8_t)reason;
    e->dropped = 0;
    g->bans++;
    if (event)
        guard_event_add(g, e->ip, reason, until);
}

/* Does the User-Agent header of a message (before any parse) contain a scanner's name? */
static int guard_scanner(const guard_table *g, const char *buf, size_t len)
{
    const char *p = buf, *end = buf + len, *nl, *v, *ve;
    int i;
    while (p < end) {
        nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL || nl + 1 >= end)
            return 0;
        p = nl + 1;
        if (*p == '\r' || *p == '\n')
            return 0; /* end of the headers */
        if ((*p != 'U' && *p != 'u') || end - p < 11 || strncasecmp(p, "user-agent", 10) != 0)
            continue;
        v = p + 10;
        while (v < end && (*v == ' ' || *v == '\t'))
            v++;
        if (v >= end || *v != ':')
            continue;
        v++;
        ve = memchr(v, '\n', (size_t)(end - v));
        if (ve == NULL)
            ve = end;
        for (i = 0; i < g->nagents; i++) {
            const char *q;
            int n = g->agent_len[i];
            for (q = v; q + n <= ve; q++)
                if (strncasecmp(q, g->agents[i], (size_t)n) == 0)
                    return 1;
        }
        p = ve;
    }
    return 0;
}

/* The check of one received message from `ip`: GUARD_PASS or GUARD_DROP. */
static inline int guard_check_key(guard_table *g, const uint8_t ip[16], const char *buf,
                                  size_t len, double now)
{
    guard_entry *e;
    uint32_t limit;
    if (!g->enabled)
        return GUARD_PASS;
    g->checked++;
    e = guard_slot(g, ip, now, 1);
    if (e->trusted)
        return GUARD_PASS;
    e->last_seen = now;
    if (e->banned_until > now) {
        e->dropped++;
        g->dropped++;
        return GUARD_DROP;
    }
    if (g->nagents && buf != NULL && guard_scanner(g, buf, len)) {
        guard_ban_entry(g, e, GUARD_SCANNER, now + g->ban_secs, 1);
        e->dropped = 1;
        g->dropped++;
        return GUARD_DROP;
    }
    if (g->threshold == 0)
        return GUARD_PASS;
    if (now - e->window_start >= g->window) {
        e->window_start = now;
        e->count = 0;
    }
    e->count++;
    limit = g->threshold;
    if (e->good_until > now)
        limit *= g->good_factor;
    if (e->count > limit) {
        guard_ban_entry(g, e, GUARD_FLOOD, now + g->ban_secs, 1);
        e->dropped = 1;
        g->dropped++;
        return GUARD_DROP;
    }
    return GUARD_PASS;
}

static inline int guard_check_sa(guard_table *g, const struct sockaddr_storage *sa,
                                 const char *buf, size_t len, double now)
{
    uint8_t ip[16];
    if (guard_key_sa(sa, ip) != 0)
        return GUARD_PASS;
    return guard_check_key(g, ip, buf, len, now);
}

/* the same for callers that hold the address as an opaque pointer (udpio) */
static inline int guard_check_raw(guard_table *g, const void *sa, const char *buf, size_t len,
                                  double now)
{
    return guard_check_sa(g, (const struct sockaddr_storage *)sa, buf, len, now);
}

#endif
