"""A growable bit set of line indices: 1 bit per input line, so resume state stays tiny."""


class Bitmap:
    __slots__ = ("_bits",)

    def __init__(self, size: int = 0) -> None:
        self._bits = bytearray((size + 7) // 8)

    def add(self, index: int) -> None:
        byte = index >> 3
        if byte >= len(self._bits):
            self._bits.extend(bytes(byte + 1 - len(self._bits) + len(self._bits) // 2))
        self._bits[byte] |= 1 << (index & 7)

    def __contains__(self, index: int) -> bool:
        byte = index >> 3
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << (index & 7)))

    def count(self) -> int:
        return sum(b.bit_count() for b in self._bits)
