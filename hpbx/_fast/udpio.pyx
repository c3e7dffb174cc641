# cython: language_level=3
"""Batched datagram I/O for the SIP UDP transport: recvmmsg, and sendmmsg from a native
sender thread (see udpio_core.h).

One system call receives every datagram waiting (up to 64); what is sent in a loop iteration
leaves as one batch. With ``start_sender`` a native thread makes the send calls (for a
registrar, the kernel's work of sending is a third of the CPU), so the event loop only fills
batches. The socket is the caller's (bound); this object only uses its fd.

  * ``recv()`` -> [(bytes, addr), ...], [] when nothing waits; ``addr`` as Python's socket
    module gives it: (host, port) for IPv4, (host, port, flowinfo, scope_id) for IPv6.
  * ``queue(data, addr)`` keeps a datagram for the next ``flush()``. ``addr`` must hold a
    literal address (ValueError otherwise: the transport resolves names first).
  * ``flush()`` sends what is queued (or hands it to the sender thread); returns how many
    datagrams still wait: the socket buffer is full (no thread: send again when writable), or
    the thread is busy (it writes to the eventfd given to ``start_sender`` when done). A
    datagram the kernel refuses (unroutable address, ...) is dropped and counted in
    ``send_errors``. At most ``backlog`` datagrams wait; beyond that new ones are dropped and
    counted in ``dropped``.
"""
from libc.errno cimport EAGAIN, ENOBUFS
from libc.string cimport memcmp, memcpy, strerror
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    enum: AF_INET, AF_INET6

cdef extern from "udpio_core.h" nogil:
    enum: UDPIO_BATCH, UDPIO_TX
    ctypedef struct sockaddr_storage "struct sockaddr_storage":
        pass
    ctypedef struct udpio_rx:
        pass
    ctypedef struct udpio_tx:
        int n
    ctypedef struct udpio_sender:
        unsigned long errors
    udpio_rx* udpio_rx_new()
    void udpio_rx_free(udpio_rx* r)
    int udpio_recv(int fd, udpio_rx* r)
    const char* udpio_rx_buf(udpio_rx* r, int i, size_t* length)
    const sockaddr_storage* udpio_rx_sa(udpio_rx* r, int i)
    socklen_t udpio_rx_salen(udpio_rx* r, int i)
    int udpio_addr(const sockaddr_storage* sa, char* host, size_t hostlen, int* port,
                   unsigned int* flowinfo, unsigned int* scope_id)
    int udpio_sockaddr(int family, const char* host, int port, unsigned int scope_id,
                       sockaddr_storage* sa, socklen_t* salen)
    void udpio_tx_add(udpio_tx* t, const char* data, size_t length, const sockaddr_storage* sa,
                      socklen_t salen)
    int udpio_send(int fd, udpio_tx* t, int first)
    int udpio_sender_start(udpio_sender* s, int fd, int notify_fd)
    int udpio_sender_offer(udpio_sender* s, udpio_tx* t)
    void udpio_sender_stop(udpio_sender* s)

from libc.stdlib cimport calloc, free
from hpbx._fast.guard cimport Guard, guard_table, guard_now, guard_check_raw, GUARD_PASS


BATCH = UDPIO_BATCH  # datagrams per recv() at most
SEND_BATCH = UDPIO_TX  # datagrams per send batch


cdef class DatagramIO:
    cdef int fd
    cdef int family
    cdef udpio_rx* rx
    cdef udpio_tx* tx       # the batch being filled
    cdef udpio_tx* spare    # the other batch: sent, or in the sender thread's hands
    cdef list held          # the bytes objects the filled batch points into
    cdef list spare_held    # ... and those of the other batch
    cdef int first          # without a sender thread: first datagram of the batch not yet sent
    cdef list waiting       # (data, addr) beyond one batch
    cdef udpio_sender sender
    cdef readonly bint threaded
    cdef readonly int backlog
    cdef unsigned long _send_errors
    cdef readonly unsigned long dropped
    cdef Guard _guard                # asked for every received datagram, when set
    cdef readonly unsigned long filtered  # datagrams the guard dropped
    # the address of the last datagram received and sent: a peer usually sends many
    cdef sockaddr_storage rx_sa
    cdef socklen_t rx_salen
    cdef object rx_addr
    cdef object tx_addr
    cdef sockaddr_storage tx_sa
    cdef socklen_t tx_salen

    def __cinit__(self, int fd, int family, int backlog=20000):
        self.rx = udpio_rx_new()
        self.tx = <udpio_tx*>calloc(1, sizeof(udpio_tx))
        self.spare = <udpio_tx*>calloc(1, sizeof(udpio_tx))
        if self.rx == NULL or self.tx == NULL or self.spare == NULL:
            raise MemoryError()
        self.fd = fd
        self.family = family
        self.held = []
        self.spare_held = []
        self.waiting = []
        self.backlog = backlog

    def __dealloc__(self):
        if self.threaded:
            with nogil:
                udpio_sender_stop(&self.sender)
            self.threaded = False
        udpio_rx_free(self.rx)
        free(self.tx)
        free(self.spare)
        self.rx = NULL
        self.tx = NULL
        self.spare = NULL

    # ---- sending from a native thread
    def start_sender(self, int notify_fd) -> None:
        """From now on a native thread makes the send calls; it writes 1 to the eventfd
        ``notify_fd`` when it has finished a batch while more were waiting (flush again then)."""
        if self.threaded:
            return
        self._flush_here()  # what is queued goes first, in order
        rc = udpio_sender_start(&self.sender, self.fd, notify_fd)
        if rc != 0:
            raise OSError(rc, strerror(rc).decode())
        self.threaded = True

    def stop_sender(self) -> None:
        """Send what the thread holds, stop and join it; later flushes send from here."""
        if not self.threaded:
            return
        with nogil:
            udpio_sender_stop(&self.sender)
        self._send_errors += self.sender.errors
        self.threaded = False
        self.spare.n = 0
        self.spare_held.clear()

    @property
    def send_errors(self) -> int:
        return self._send_errors + (self.sender.errors if self.threaded else 0)

    # ---- receiving
    @property
    def guard(self):
        return self._guard

    @guard.setter
    def guard(self, Guard guard):
        """A ban table (hpbx._fast.guard) every datagram passes before it becomes bytes;
        what it drops never leaves recv() (counted in ``filtered``)."""
        self._guard = guard

    def recv(self):
        cdef int n = udpio_recv(self.fd, self.rx)
        cdef int i
        cdef size_t length
        cdef const char* buf
        cdef guard_table* g = NULL
        cdef double now = 0.0
        if n < 0:
            raise OSError(-n, strerror(-n).decode())
        if self._guard is not None and n > 0:
            g = &self._guard.t
            now = guard_now()
        out = []
        for i in range(n):
            buf = udpio_rx_buf(self.rx, i, &length)
            if g != NULL and guard_check_raw(g, udpio_rx_sa(self.rx, i), buf, length,
                                             now) != GUARD_PASS:
                self.filtered += 1
                continue
            out.append((PyBytes_FromStringAndSize(buf, <Py_ssize_t>length), self._addr(i)))
        return out

    cdef object _addr(self, int i):
        cdef const sockaddr_storage* sa = udpio_rx_sa(self.rx, i)
        cdef socklen_t salen = udpio_rx_salen(self.rx, i)
        cdef char host[64]
        cdef int port
        cdef unsigned int flowinfo, scope_id
        if (self.rx_addr is not None and salen == self.rx_salen
                and memcmp(sa, &self.rx_sa, salen) == 0):
            return self.rx_addr
        if udpio_addr(sa, host, sizeof(host), &port, &flowinfo, &scope_id) != 0:
            return ("", 0)
        text = host.decode("ascii")
        if self.family == AF_INET6:
            addr = (text, port, flowinfo, scope_id)
        else:
            addr = (text, port)
        memcpy(&self.rx_sa, sa, salen)
        self.rx_salen = salen
        self.rx_addr = addr
        return addr

    # ---- sending
    def queue(self, bytes data, addr) -> int:
        """Keep ``data`` for the next flush; the number of datagrams now waiting."""
        cdef sockaddr_storage sa
        cdef socklen_t salen
        cdef unsigned int scope = 0
        if self.tx.n >= UDPIO_TX:
            if len(self.waiting) >= self.backlog:
                self.dropped += 1
            else:
                self.waiting.append((data, addr))
            return self.pending
        if self.tx_addr is None or addr != self.tx_addr:
            if self.family == AF_INET6 and len(addr) >= 4:
                scope = addr[3]
            if udpio_sockaddr(self.family, addr[0].encode(), addr[1], scope, &sa, &salen) != 0:
                raise ValueError(f"not a literal address for this socket: {addr[0]!r}")
            memcpy(&self.tx_sa, &sa, salen)
            self.tx_salen = salen
            self.tx_addr = addr
        udpio_tx_add(self.tx, PyBytes_AS_STRING(data), <size_t>PyBytes_GET_SIZE(data),
                     &self.tx_sa, self.tx_salen)
        self.held.append(data)
        return self.tx.n - self.first + len(self.waiting)

    cdef int _refill(self) except -1:
        """Move waiting datagrams into the (empty) batch being filled."""
        if not self.waiting:
            return 0
        more = self.waiting[:UDPIO_TX]
        del self.waiting[:UDPIO_TX]
        for data, addr in more:
            try:
                self.queue(data, addr)
            except ValueError:
                self._send_errors += 1
        return 0

    def flush(self) -> int:
        """Send (or hand to the sender thread) what is queued; the number still waiting: the
        socket buffer is full, or the thread is busy and will notify when it is done."""
        if not self.threaded:
            return self._flush_here()
        while True:
            if self.tx.n == 0:
                self._refill()
                if self.tx.n == 0:
                    return 0
            if not udpio_sender_offer(&self.sender, self.tx):
                return self.pending
            # the thread has the filled batch; the other one is done: its octets can go
            self.tx, self.spare = self.spare, self.tx
            self.held, self.spare_held = self.spare_held, self.held
            self.held.clear()
            self.tx.n = 0

    cdef int _flush_here(self) except -1:
        cdef int n, err
        while True:
            while self.first < self.tx.n:
                n = udpio_send(self.fd, self.tx, self.first)
                if n >= 0:
                    self.first += n
                    continue
                err = -n
                if err == EAGAIN or err == ENOBUFS:  # EWOULDBLOCK is EAGAIN on Linux
                    return self.tx.n - self.first + len(self.waiting)
                # this datagram cannot go (no route, refused address): drop it, go on
                self._send_errors += 1
                self.first += 1
            self.tx.n = 0
            self.first = 0
            self.held.clear()
            if not self.waiting:
                return 0
            self._refill()

    @property
    def pending(self) -> int:
        """Datagrams queued and not yet handed to the kernel (or to the sender thread)."""
        return self.tx.n - self.first + len(self.waiting)
