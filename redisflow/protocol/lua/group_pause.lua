-- Pause or resume one group of a fair-group queue: a paused group keeps its messages and
-- is not served (its messages being handled finish); resumed, it is offered to the ring.
-- KEYS[1..7] as lib_groups.lua. ARGV[1] base, ARGV[2] mode, ARGV[3] group, ARGV[4] '1' to
-- pause, '0' to resume.
-- Returns 1 if that changed something, else 0.
local g = ARGV[3]
if ARGV[4] == '1' then
  redis.call('ZREM', RING, g)
  return redis.call('SADD', PAUSED, g)
end
local changed = redis.call('SREM', PAUSED, g)
if offer(g, 0) then wake(1) end
return changed
