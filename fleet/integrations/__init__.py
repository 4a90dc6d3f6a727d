"""What the fleet offers third parties over MQTT: site-scoped topics with the latest values
(`topics`, `sitetopics`), Home Assistant discovery (`hass`), both fed by one runner (`runner`), and
the broker read access of API tokens (`topics.reader_acl`)."""
