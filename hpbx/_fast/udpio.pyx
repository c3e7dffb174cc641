# cython: language_level=3
"""Batched datagram I/O for the SIP UDP transport: recvmmsg and sendmmsg (see udpio_core.h).

One system call receives every datagram waiting (up to 64), and one sends every response
queued in a loop iteration: under load the per-datagram cost of the socket layer is shared by
the batch. The socket is the caller's (bound, non-blocking); this object only uses its fd.

  * ``recv()`` -> [(bytes, addr), ...], [] when nothing waits; ``addr`` as Python's socket
    module gives it: (host, port) for IPv4, (host, port, flowinfo, scope_id) for IPv6.
  * ``queue(data, addr)`` keeps a datagram for the next ``flush()``. ``addr`` must hold a
    literal address (ValueError otherwise: the transport resolves names first).
  * ``flush()`` sends what is queued; returns how many datagrams still wait because the socket
    buffer is full (send again when the socket is writable). A datagram the kernel refuses
    (unroutable address, ...) is dropped and counted in ``send_errors``. At most ``backlog``
    datagrams wait; beyond that new ones are dropped and counted in ``dropped``.
"""
from libc.errno cimport EAGAIN, ENOBUFS
from libc.string cimport memcmp, memcpy, strerror
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    enum: AF_INET, AF_INET6

cdef extern from "udpio_core.h" nogil:
    enum: UDPIO_BATCH
    ctypedef struct sockaddr_storage "struct sockaddr_storage":
        pass
    ctypedef struct udpio_rx:
        pass
    ctypedef struct udpio_tx:
        int n
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


BATCH = UDPIO_BATCH  # datagrams per recv() at most


cdef class DatagramIO:
    cdef int fd
    cdef int family
    cdef udpio_rx* rx
    cdef udpio_tx tx
    cdef list held          # the bytes objects the C batch points into
    cdef int first          # index of the first datagram of the batch not yet sent
    cdef list waiting       # (data, addr) beyond one batch
    cdef readonly int backlog
    cdef readonly unsigned long send_errors
    cdef readonly unsigned long dropped
    # the address of the last datagram received and sent: a peer usually sends many
    cdef sockaddr_storage rx_sa
    cdef socklen_t rx_salen
    cdef object rx_addr
    cdef object tx_addr
    cdef sockaddr_storage tx_sa
    cdef socklen_t tx_salen

    def __cinit__(self, int fd, int family, int backlog=20000):
        self.rx = udpio_rx_new()
        if self.rx == NULL:
            raise MemoryError()
        self.fd = fd
        self.family = family
        self.held = []
        self.waiting = []
        self.backlog = backlog
        self.tx.n = 0

    def __dealloc__(self):
        udpio_rx_free(self.rx)
        self.rx = NULL

    def recv(self):
        cdef int n = udpio_recv(self.fd, self.rx)
        cdef int i
        cdef size_t length
        cdef const char* buf
        if n < 0:
            raise OSError(-n, strerror(-n).decode())
        out = []
        for i in range(n):
            buf = udpio_rx_buf(self.rx, i, &length)
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

    def queue(self, bytes data, addr) -> int:
        """Keep ``data`` for the next flush; the number of datagrams now waiting."""
        cdef sockaddr_storage sa
        cdef socklen_t salen
        cdef unsigned int scope = 0
        if self.tx.n >= UDPIO_BATCH:
            if len(self.waiting) >= self.backlog:
                self.dropped += 1
                return self.tx.n - self.first + len(self.waiting)
            self.waiting.append((data, addr))
            return self.tx.n - self.first + len(self.waiting)
        if self.tx_addr is None or addr != self.tx_addr:
            if self.family == AF_INET6 and len(addr) >= 4:
                scope = addr[3]
            if udpio_sockaddr(self.family, addr[0].encode(), addr[1], scope, &sa, &salen) != 0:
                raise ValueError(f"not a literal address for this socket: {addr[0]!r}")
            memcpy(&self.tx_sa, &sa, salen)
            self.tx_salen = salen
            self.tx_addr = addr
        udpio_tx_add(&self.tx, PyBytes_AS_STRING(data), <size_t>PyBytes_GET_SIZE(data),
                     &self.tx_sa, self.tx_salen)
        self.held.append(data)
        return self.tx.n - self.first + len(self.waiting)

    def flush(self) -> int:
        """Send what is queued; the number of datagrams still waiting (socket buffer full)."""
        cdef int n, err
        while True:
            while self.first < self.tx.n:
                n = udpio_send(self.fd, &self.tx, self.first)
                if n >= 0:
                    self.first += n
                    continue
                err = -n
                if err == EAGAIN or err == ENOBUFS:  # EWOULDBLOCK is EAGAIN on Linux
                    return self.tx.n - self.first + len(self.waiting)
                # this datagram cannot go (no route, refused address): drop it, go on
                self.send_errors += 1
                self.first += 1
            self.tx.n = 0
            self.first = 0
            self.held.clear()
            if not self.waiting:
                return 0
            more = self.waiting[:UDPIO_BATCH]
            del self.waiting[:UDPIO_BATCH]
            for data, addr in more:
                try:
                    self.queue(data, addr)
                except ValueError:
                    self.send_errors += 1

    @property
    def pending(self) -> int:
        return self.tx.n - self.first + len(self.waiting)
