# Sound level from an I2S MEMS microphone (INMP441 / ICS-43434: 24-bit data left-justified in
# 32-bit slots). A-weighting per IEC 61672-1 as three biquads, the bilinear transform of the
# analog poles at 20.6, 107.7, 737.9 and 12194 Hz computed at setup for the sample rate; LAeq over
# the reporting window and LAmax with F (125 ms) time weighting.
#
# Only the top 16 bits of each slot are used (the mic's noise floor, 33 dB(A), is well above the
# 16-bit floor at -26 dBFS sensitivity), read as the odd halves of an int16 array: no big ints.
import array
import math

from node import bus as hw

try:
    import micropython

    native = micropython.native
except (ImportError, AttributeError):  # CPython

    def native(f):
        return f


# IEC 61672-1 pole frequencies (Hz), exact values behind the rounded 20.6 / 107.7 / 737.9 / 12194.
F1, F2, F3, F4 = 20.598997, 107.65265, 737.86223, 12194.217
FULL_SCALE = 32768  # int16 peak: a full-scale sine is 0 dBFS
DEFAULTS = {"rate": 16000, "sensitivity_dbfs": -26.0, "cal_db": 0.0, "block_ms": 16}


def _bilinear(b, a, k):
    """Analog (b2 s^2 + b1 s + b0)/(a2 s^2 + a1 s + a0) -> digital, s = k (1 - 1/z)/(1 + 1/z)."""
    b2, b1, b0 = b
    a2, a1, a0 = a
    kk = k * k
    d = a2 * kk + a1 * k + a0
    return ((b2 * kk + b1 * k + b0) / d, 2 * (b0 - b2 * kk) / d, (b2 * kk - b1 * k + b0) / d,
            2 * (a0 - a2 * kk) / d, (a2 * kk - a1 * k + a0) / d)


def a_weighting_sos(fs):
    """[(b0, b1, b2, a1, a2)] x 3 for sample rate fs, normalised to 0 dB at 1 kHz."""
    w1, w2, w3, w4 = [2 * math.pi * f for f in (F1, F2, F3, F4)]
    k = 2.0 * fs
    sos = [
        _bilinear((1, 0, 0), (1, 2 * w1, w1 * w1), k),  # s^2 / (s + w1)^2
        _bilinear((1, 0, 0), (1, w2 + w3, w2 * w3), k),  # s^2 / ((s + w2)(s + w3))
        _bilinear((0, 0, w4 * w4), (1, 2 * w4, w4 * w4), k),  # w4^2 / (s + w4)^2
    ]
    g = 1.0 / gain(sos, 1000.0, fs)
    b0, b1, b2, a1, a2 = sos[2]
    sos[2] = (b0 * g, b1 * g, b2 * g, a1, a2)
    return sos


def gain(sos, f, fs):
    """|H| of the cascade at frequency f."""
    w = 2 * math.pi * f / fs
    c1, s1, c2, s2 = math.cos(w), math.sin(w), math.cos(2 * w), math.sin(2 * w)
    g = 1.0
    for b0, b1, b2, a1, a2 in sos:
        nr, ni = b0 + b1 * c1 + b2 * c2, -(b1 * s1 + b2 * s2)
        dr, di = 1 + a1 * c1 + a2 * c2, -(a1 * s1 + a2 * s2)
        g *= math.sqrt((nr * nr + ni * ni) / (dr * dr + di * di))
    return g


@native
def _filter_sum(buf, start, stop, c, s):
    """A-weight buf[start:stop:2] through the cascade; returns the sum of squares (unscaled).

    c = (a11, a12, a21, a22, a31, a32); the numerators are (1, -2, 1), (1, -2, 1), (1, 2, 1) and
    their gains are folded into one factor applied by the caller. Transposed direct form II keeps
    the float32 state small near the low-frequency poles. State s is loaded into locals and stored
    back so the loop touches no attributes.
    """
    a11 = c[0]
    a12 = c[1]
    a21 = c[2]
    a22 = c[3]
    a31 = c[4]
    a32 = c[5]
    p1 = s[0]
    q1 = s[1]
    p2 = s[2]
    q2 = s[3]
    p3 = s[4]
    q3 = s[5]
    acc = 0.0
    for i in range(start, stop, 2):
        x = float(buf[i])
        y = x + p1
        p1 = q1 - 2.0 * x - a11 * y
        q1 = x - a12 * y
        x = y
        y = x + p2
        p2 = q2 - 2.0 * x - a21 * y
        q2 = x - a22 * y
        x = y
        y = x + p3
        p3 = q3 + 2.0 * x - a31 * y
        q3 = x - a32 * y
        acc += y * y
    s[0] = p1
    s[1] = q1
    s[2] = p2
    s[3] = q2
    s[4] = p3
    s[5] = q3
    return acc


class NoiseMeter:
    def __init__(self, spec, clock, source=None):
        self.cfg = dict(DEFAULTS)
        self.cfg.update(spec)
        self.rate = self.cfg["rate"]
        self.source = source if source is not None else hw.i2s(spec, self.rate, clock)
        self.block = self.rate * self.cfg["block_ms"] // 1000
        self.buf = array.array("h", [0] * (2 * self.block))  # int32 slots seen as int16 halves
        self.sos = a_weighting_sos(self.rate)
        g = 1.0
        for sec in self.sos:
            g *= sec[0]
        self.g2 = g * g  # folded numerator gain, squared
        self.coef = array.array("f", [v for sec in self.sos for v in sec[3:]])
        self.state = array.array("f", [0.0] * 6)
        # Mean square of a 94 dB SPL sine: its peak is `sensitivity` below full scale.
        amp = FULL_SCALE * 10 ** (self.cfg["sensitivity_dbfs"] / 20)
        self.ms94 = amp * amp / 2
        self.fast_k = 1 - math.exp(-self.block / self.rate / 0.125)
        self.reset_window()
        self.fast = 0.0
        self.settle = self.rate // 4  # skip the filter's start-up transient
        self.first = True  # the first window may end before the DMA has delivered anything

    def reset_window(self):
        self.e_sum = 0.0
        self.n_sum = 0
        self.fast_max = 0.0
        self.heard = False  # any sample this window, settling ones included

    def level_db(self, ms):
        if ms <= 0:
            return 0.0
        return 94.0 + 10 * math.log10(ms / self.ms94) + self.cfg["cal_db"]

    def process(self, buf, n):
        """Feed n samples (the odd int16 halves of buf). Returns the block's mean square."""
        ms = _filter_sum(buf, 1, 2 * n, self.coef, self.state) * self.g2 / n
        if self.settle > 0:
            self.settle -= n
            return ms
        self.e_sum += ms * n
        self.n_sum += n
        self.fast += (ms - self.fast) * self.fast_k
        if self.fast > self.fast_max:
            self.fast_max = self.fast
        return ms

    def setup(self):
        pass

    def poll(self):
        """Process what the microphone has delivered; call often (a task, or from read())."""
        got = self.source.readinto(self.buf)
        while got:
            self.heard = True
            self.process(self.buf, got // 4)
            if got < len(self.buf) * 2:
                break
            got = self.source.readinto(self.buf)

    def read(self):
        self.poll()
        first, self.first = self.first, False
        if not self.n_sum:
            # A silent microphone is a fault; a meter still starting or settling has no window yet.
            silent = not self.heard and not first
            self.reset_window()
            if silent:
                raise hw.SensorFault("noise: no audio samples")
            return []
        laeq = self.level_db(self.e_sum / self.n_sum)
        lamax = self.level_db(self.fast_max)
        self.reset_window()
        return [("noise_laeq", "dB", round(laeq, 1)), ("noise_lamax", "dB", round(lamax, 1))]


def throughput(meter, seconds=1.0):
    """Samples per second the A-weighting loop processes here (compare with meter.rate).

    Runs a twin of `meter` (same rate and block) so the meter's window is left untouched.
    """
    meter = NoiseMeter(meter.cfg, None, meter.source)
    buf = meter.buf
    for i in range(1, len(buf), 2):
        buf[i] = (i * 7919) % 20000 - 10000
    n = 0
    start = hw.wall_ms()
    while hw.wall_diff(hw.wall_ms(), start) < seconds * 1000:
        meter.process(buf, meter.block)
        n += meter.block
    return n * 1000 // max(1, hw.wall_diff(hw.wall_ms(), start))
