# Readings waiting for the fleet. An entry leaves only when the fleet's `stored` watermark covers
# it: a broker's PUBACK proves nothing once the broker can crash before saving its queue.
class Outbox:
    def __init__(self, capacity):
        self.capacity = capacity
        self.items = []  # (seq, payload), seq increasing
        self.sent_upto = -1  # highest seq published on the current connection
        self.stored_upto = -1  # the fleet's watermark
        self.dropped = 0

    def __len__(self):
        return len(self.items)

    def put(self, seq, payload):
        self.items.append((seq, payload))
        if len(self.items) > self.capacity:
            self.items.pop(0)
            self.dropped += 1

    def next_unsent(self):
        for item in self.items:
            if item[0] > self.sent_upto:
                return item
        return None

    def mark_sent(self, seq):
        self.sent_upto = seq

    def release(self, upto):
        """The fleet stored everything up to `upto`: forget it."""
        if upto > self.stored_upto:
            self.stored_upto = upto
        i = 0
        while i < len(self.items) and self.items[i][0] <= upto:
            i += 1
        if i:
            del self.items[:i]

    def rewind(self):
        """New connection: everything the fleet has not confirmed goes out again."""
        self.sent_upto = -1
