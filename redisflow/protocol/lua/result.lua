-- A message's result: the record, then its push to whoever waits (results.py).
-- KEYS[1] the record; ARGV[1] the record, ARGV[2] its TTL (ms), ARGV[3] the reply channel
-- (same slot), ARGV[4] 'nx': keep the first record written (a channel request: the first
-- handler that replies wins; a cancel). Otherwise a record replaces the one before (a
-- message run again), except a cancellation's: its waiters were told, so a handler that
-- finished anyway (inside msg.shield(), or before its worker saw the mark) leaves it.
-- A SPUBLISH from a script must stay in the script's slot.
if ARGV[4] == 'nx' then
  if not redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then
    return 0
  end
else
  local old = redis.call('GET', KEYS[1])
  if old and string.sub(old, 1, 14) == '0["cancelled",' then
    return 0
  end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
redis.call('SPUBLISH', ARGV[3], ARGV[1])
return 1
