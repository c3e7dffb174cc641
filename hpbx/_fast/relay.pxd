# Declarations of hpbx._fast.relay for other Cython modules (players, recorders later).

cdef extern from "relay_engine.h" nogil:
    ctypedef struct rl_relay:
        int npairs
        int nsess
        int nworkers
        int rcvbuf
        int nice
        int uring
        int port_min


cdef class Relay:
    cdef rl_relay *_r
    cdef readonly str address
    cdef readonly str address6  # "" or the IPv6 address beside an IPv4 one (dual-stack sockets)
    cdef readonly int port_min, port_max, workers
    cdef readonly bint strict_latching
    cdef readonly double silence
    cdef readonly int nice
    cdef readonly str io  # "uring" or "epoll": the packet loop the workers run
    cdef bint _started
    cdef bint _closing  # close() is freeing the C relay: every command refuses

    cdef rl_relay *_live(self) except NULL
