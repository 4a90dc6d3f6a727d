# A simulated climate sensor: a day-shaped temperature and humidity, deterministic from a seed.
import math


class SimClimate:
    def __init__(self, spec, clock):
        self.clock = clock  # returns Unix seconds
        self.seed = spec.get("seed", 1)
        self.base = spec.get("base_c", 20.0)

    def setup(self):
        pass

    def _noise(self, t):
        x = (int(t) * 1103515245 + self.seed * 12345) & 0x7FFFFFFF
        return (x % 1000) / 1000.0 - 0.5

    def read(self):
        t = self.clock()
        day = 2 * math.pi * (t % 86400) / 86400
        temp = self.base + 2.0 * math.sin(day - 2.0) + 0.1 * self._noise(t)
        hum = 45.0 - 5.0 * math.sin(day - 2.0) + 0.5 * self._noise(t + 7)
        return [("temperature", "Cel", round(temp, 2)), ("humidity", "%RH", round(hum, 2))]
