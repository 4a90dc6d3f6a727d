"""A-weighting (IEC 61672-1) and the 94 dB SPL calibration point, with synthetic tones."""

import pytest

# IEC 61672-1:2013 table 3: A-weighting (dB) and class 1 tolerance limits (+, -) at octave centres.
IEC = {31.5: (-39.4, 1.5, 1.5), 63: (-26.2, 1.0, 1.0), 125: (-16.1, 1.0, 1.0), 250: (-8.6, 1.0, 1.0),
       500: (-3.2, 1.0, 1.0), 1000: (0.0, 0.7, 0.7), 2000: (1.2, 1.0, 1.0), 4000: (1.0, 1.0, 1.0),
       8000: (-1.1, 1.5, 2.5)}

TONE = """
import math
from node.sensors import noise
class Quiet:
    def readinto(self, buf):
        return 0
def level(rate, f, spl, seconds=0.5):
    m = noise.NoiseMeter({"rate": rate}, None, Quiet())
    amp = 32768 * 10 ** ((-26.0 + spl - 94) / 20)     # INMP441: 94 dB SPL = -26 dBFS peak
    w = 2 * math.pi * f / rate
    buf = m.buf
    n = 0
    total = m.settle + int(seconds * rate)
    while n < total:
        for i in range(m.block):
            buf[2 * i + 1] = int(amp * math.sin(w * (n + i)) + 0.5)
        m.process(buf, m.block)
        n += m.block
    laeq = m.level_db(m.e_sum / m.n_sum)
    return [laeq, m.level_db(m.fast_max)]
"""


@pytest.mark.parametrize("rate", [16000, 48000])
def test_a_weighting_matches_iec_61672_class_1(fwrun, rate):
    freqs = [f for f in IEC if f < rate / 3]  # 8 kHz is too near Nyquist at 16 kHz
    res = fwrun(setup=TONE, code="""
        for f in %r:
            out([f, level(%d, f, 94.0, 0.25)[0] - 94.0])
    """ % (freqs, rate))  # noqa: UP031
    assert [r[0] for r in res] == freqs
    for f, got in res:
        want, plus, minus = IEC[f]
        assert want - minus <= got <= want + plus, (f, got, want)
        assert abs(got - want) < 0.7, (f, got, want)  # what the bilinear design actually achieves


@pytest.mark.parametrize("rate", [16000, 48000])
def test_94_db_spl_1khz_reads_94_dba(fwrun, rate):
    ((laeq, lamax),) = fwrun(setup=TONE, code=f"out(level({rate}, 1000.0, 94.0))")
    assert abs(laeq - 94.0) <= 0.5
    assert abs(lamax - laeq) < 0.2  # a steady tone: F-weighted maximum = equivalent level


def test_sim_microphone_read_and_throughput(fwrun):
    (reading, rate, fault_) = fwrun("""
        from node.sensors import noise
        from node.sim import signals
        mic = signals.Microphone(16000, 60.0, 1000.0)
        m = noise.NoiseMeter({"rate": 16000, "cal_db": 0.5}, None, mic)
        m.setup()
        clk.sleep(2000)
        out(m.read())
        out([noise.throughput(m, 0.3), m.rate])
        mic.gone = True
        clk.sleep(1000)
        out(fault(m.read))
    """)
    assert reading[0][:2] == ["noise_laeq", "dB"] and abs(reading[0][2] - 60.5) <= 0.3
    assert reading[1][:2] == ["noise_lamax", "dB"] and abs(reading[1][2] - 60.5) <= 0.3
    assert rate[0] > 0
    assert fault_ == "noise: no audio samples"


def test_a_starting_microphone_is_not_a_fault_but_a_silent_one_is(fwrun):
    """The first window may close before the I2S DMA delivers, or while the filter settles: no
    reading then, not a fault. A whole window without a sample is one, from boot as later on."""
    (first, settling, steady, fault_, dead_first, dead_second) = fwrun("""
        from node.sensors import noise
        from node.sim import signals
        mic = signals.Microphone(16000, 60.0, 1000.0)
        m = noise.NoiseMeter({"rate": 16000}, None, mic)
        m.setup()
        out(m.read())              # read at once: nothing delivered yet
        clk.sleep(100)
        out(m.read())              # 0.1 s of audio, all in the 0.25 s settling time
        clk.sleep(1000)
        out(m.read())
        mic.gone = True
        clk.sleep(1000)
        out(fault(m.read))
        dead = signals.Microphone(16000, 60.0, 1000.0)
        dead.gone = True
        d = noise.NoiseMeter({"rate": 16000}, None, dead)
        out(d.read())
        clk.sleep(1000)
        out(fault(d.read))
    """)
    assert first == [] and settling == []
    assert steady[0][0] == "noise_laeq" and abs(steady[0][2] - 60.0) <= 0.3
    assert fault_ == "noise: no audio samples"
    assert dead_first == [] and dead_second == "noise: no audio samples"
