"""CRC-32 of two texts joined, from the CRCs of each: zlib's `crc32_combine`, in Python.

CPython's zlib module does not expose `crc32_combine`, and the gzip body is assembled from
pieces compressed at different scrapes: its trailer needs the CRC of the whole text, which
is no longer there to read. The CRC is linear over GF(2): appending `n` bytes to a text
moves its CRC register through `n` zero bytes (a 32x32 bit matrix, the n-th power of the
one-byte operator) and XORs in the appended text's own CRC. The operators for 1, 2, 4, ...
zero bytes are made once by squaring (zlib's method) and kept as byte lookup tables, so
one combination costs a few table reads per set bit of `n`.
"""

from __future__ import annotations

__all__ = ["crc32_combine"]

_POLYNOMIAL = 0xEDB88320  # CRC-32, reflected
_Matrix = tuple[int, ...]  # 32 columns: the image of each bit of the register
_Tables = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def _times(matrix: _Matrix, vector: int) -> int:
    total, bit = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[bit]
        vector >>= 1
        bit += 1
    return total


def _square(matrix: _Matrix) -> _Matrix:
    return tuple(_times(matrix, column) for column in matrix)


def _tables(matrix: _Matrix) -> _Tables:
    """`matrix` times any register, one table per register byte (XOR of four reads)."""
    out = []
    for byte in range(4):
        columns = matrix[8 * byte : 8 * byte + 8]
        table = [0] * 256
        for value in range(1, 256):
            low = value & -value  # the lowest set bit: the rest is an earlier entry
            table[value] = table[value ^ low] ^ columns[low.bit_length() - 1]
        out.append(tuple(table))
    return out[0], out[1], out[2], out[3]


def _one_zero_byte() -> _Matrix:
    one_bit: _Matrix = (_POLYNOMIAL, *(1 << n for n in range(31)))
    return _square(_square(_square(one_bit)))  # 2, 4, then 8 zero bits


# _ZEROS[k] moves a register through 2**k zero bytes; extended as longer texts come.
_ZEROS: list[_Matrix] = [_one_zero_byte()]
_ZERO_TABLES: list[_Tables] = [_tables(_ZEROS[0])]


def _zero_tables(k: int) -> _Tables:
    while len(_ZERO_TABLES) <= k:
        _ZEROS.append(_square(_ZEROS[-1]))
        _ZERO_TABLES.append(_tables(_ZEROS[-1]))
    return _ZERO_TABLES[k]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of `a + b` from `crc1 = crc32(a)`, `crc2 = crc32(b)` and `len2 = len(b)`."""
    if len2 < 0:
        raise ValueError(f"length {len2} is negative")
    k = 0
    while len2:
        if len2 & 1:
            t0, t1, t2, t3 = _zero_tables(k)
            crc1 = t0[crc1 & 0xFF] ^ t1[crc1 >> 8 & 0xFF] ^ t2[crc1 >> 16 & 0xFF] ^ t3[crc1 >> 24]
        len2 >>= 1
        k += 1
    return crc1 ^ crc2
