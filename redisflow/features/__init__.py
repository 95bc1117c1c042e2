"""The Redis patterns redisflow offers beside plain delivery, one per module, each over the
connections of a process: producer-side dedup and compound sends (``compound``),
consumer-side idempotency, rate limits, status tracking, stream indexes, partitions, and
the memory a source takes (``memory``)."""
