OP_CONT: int
OP_TEXT: int
OP_BINARY: int
OP_CLOSE: int
OP_PING: int
OP_PONG: int

class WsProtocolError(Exception):
    code: int
    reason: str
    def __init__(self, code: int, reason: str) -> None: ...

class Deframer:
    def __init__(self, max_message: int = 65536) -> None: ...
    @property
    def buffered(self) -> int: ...
    def feed(self, data: bytes) -> list[tuple[int, bytes]]: ...

def frame(opcode: int, payload: bytes) -> bytes: ...
