"""CRC helpers against the datasheets' own check values."""


def test_crc_examples(fwrun):
    (res,) = fwrun("""
        out([bus.crc8(b'\\xbe\\xef'), bus.crc8(b'\\x07\\xe6'), bus.crc8(b'\\x01\\xf4'),
             bus.crc8(b'\\x66\\x67'), bus.crc8(b'\\x5e\\xb9'),
             bus.crc16_modbus(bytes([1, 4, 0, 0, 0, 2])), bus.crc16_modbus(b'123456789')])
    """)
    # Sensirion: 0xBEEF -> 0x92 (SCD4x/SHT4x datasheets); the SCD4x set_temperature_offset example
    # sends 0x07E6 0x48; the read_measurement example words 0x6667 (25 degC) and 0x5EB9 (37 %RH).
    assert res[:5] == [0x92, 0x48, 0x33, 0xA2, 0x3C]
    crc = res[5]
    assert [crc & 0xFF, crc >> 8] == [0x71, 0xCB]  # request 01 04 00 00 00 02 -> 71 CB on the wire
    assert res[6] == 0x4B37  # CRC-16/MODBUS catalogue check value


def test_edges_ring_overflow(fwrun):
    (res,) = fwrun("""
        q = bus.Edges(4)
        for i in range(6):
            q.push(i * 10, i & 1)
        got = []
        e = q.pop()
        while e is not None:
            got.append(list(e))
            e = q.pop()
        out([got, q.dropped])
    """)
    assert res == [[[20, 0], [30, 1], [40, 0], [50, 1]], 2]
