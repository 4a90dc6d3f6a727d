# Ed25519 signature verification (RFC 8032, section 5.1.7), pure Python for MicroPython and
# CPython. Verify only: the node never signs. Not constant time, and it need not be: everything it
# handles (public key, signature, message) is public.
#
# Points are in extended twisted Edwards coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, x*y = T/Z.
# The check [S]B == R + [k]A is done as encode([S]B + [k](-A)) == R with one joint
# double-and-add over both scalars (Straus/Shamir), a 4-bit window on each.
from node.sha512 import sha512

P = 2 ** 255 - 19
L = 2 ** 252 + 27742317777372353535851937790883648493
D = 37095705934669439343138083508754565189542113879843219016388785533085940283555  # -121665/121666
D2 = 2 * D % P
SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752  # 2^((p-1)/4)
_BY = 46316835694926478169428394003475163141307993866256225615783033603165251855960
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
BASE = (_BX, _BY, 1, _BX * _BY % P)
ZERO = (0, 1, 1, 0)


def _add(p1, p2):
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = t1 * D2 * t2 % P
    d = 2 * z1 * z2 % P
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _double(p1):
    x1, y1, z1, _ = p1
    a = x1 * x1 % P
    b = y1 * y1 % P
    c = 2 * z1 * z1 % P
    h = a + b
    s = x1 + y1
    e = h - s * s % P
    g = a - b
    f = c + g
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _neg(p1):
    x, y, z, t = p1
    return ((P - x) % P, y, z, (P - t) % P)


def _decode(s):
    """The point encoded in 32 bytes, or None if they encode no point."""
    if len(s) != 32:
        return None
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None
    # x^2 = (y^2 - 1) / (d y^2 + 1)
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    v3 = v * v * v % P
    x = u * v3 * pow(u * v3 * v3 * v % P, (P - 5) // 8, P) % P
    vx2 = v * x * x % P
    if vx2 == u:
        pass
    elif vx2 == (P - u) % P:
        x = x * SQRT_M1 % P
    else:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def _encode(p1):
    x, y, z, _ = p1
    zi = pow(z, P - 2, P)
    x = x * zi % P
    y = y * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _table(p1):
    """[0]P .. [15]P."""
    t = [ZERO, p1]
    for i in range(2, 16):
        t.append(_add(t[-1], p1))
    return t


_base_table = None


def _double_mult(s, ta, k):
    """[s]B + [k]A for A given by its window table `ta`."""
    global _base_table
    if _base_table is None:
        _base_table = _table(BASE)
    tb = _base_table
    q = ZERO
    for i in range(252, -1, -4):
        if q is not ZERO:
            q = _double(_double(_double(_double(q))))
        ws = (s >> i) & 15
        wk = (k >> i) & 15
        if ws:
            q = tb[ws] if q is ZERO else _add(q, tb[ws])
        if wk:
            q = ta[wk] if q is ZERO else _add(q, ta[wk])
    return q


def verify(public_key, signature, message):
    """True if `signature` (64 bytes) is public_key's (32 bytes) Ed25519 signature of message."""
    public_key = bytes(public_key)
    signature = bytes(signature)
    if len(public_key) != 32 or len(signature) != 64:
        return False
    a = _decode(public_key)
    if a is None:
        return False
    r = signature[:32]
    s = int.from_bytes(signature[32:], "little")
    if s >= L:
        return False
    h = sha512(r)
    h.update(public_key)
    h.update(message)
    k = int.from_bytes(h.digest(), "little") % L
    return _encode(_double_mult(s, _table(_neg(a)), k)) == r
