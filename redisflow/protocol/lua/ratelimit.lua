-- One rate-limit decision; time from the server, in microseconds.
-- KEYS[1] the limiter's key.
-- ARGV[1] 'log' or 'gcra', ARGV[2] limit, ARGV[3] window us, ARGV[4] burst (gcra),
-- ARGV[5] a unique member for this grant (log).
-- Returns 0 when granted (the grant is recorded), else the ms until a call may be granted
-- (nothing recorded). Numbers go to redis.call as numbers or via string.format: Lua's own
-- number-to-string conversion keeps only 14 digits, and a microsecond clock has 16.
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit, window = tonumber(ARGV[2]), tonumber(ARGV[3])
if ARGV[1] == 'log' then
  -- Sliding log: a ZSET of grant times. A grant counts while now - time <= window, so no
  -- closed window of that length ever holds more than `limit` grants.
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('(%.0f', now - window))
  local count = redis.call('ZCARD', KEYS[1])
  if count < limit then
    redis.call('ZADD', KEYS[1], now, ARGV[5])
    redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1)
    return 0
  end
  -- Wait for the grant whose departure brings the count below the limit (rank 0 unless
  -- the limit was lowered while grants were live).
  local first = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
  return math.ceil((tonumber(first[2]) + window + 1 - now) / 1000)
end
-- GCRA: the key holds the theoretical arrival time (TAT, us) of the next call; one call
-- every `interval`, and up to `burst` calls at once after an idle spell.
local interval = window / limit
-- (TAT rounds up to whole us, so rounding never lets the rate exceed limit / window)
local tat = math.ceil(math.max(tonumber(redis.call('GET', KEYS[1])) or now, now) + interval)
local allow_at = tat - tonumber(ARGV[4]) * interval
if allow_at > now then
  return math.ceil((allow_at - now) / 1000)
end
-- The key expires when its TAT passes: from then on it would grant like a missing key.
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
return 0
