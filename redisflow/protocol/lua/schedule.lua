-- The claim of a schedule's ticks, on the server's clock (docs/design.md, "Schedules").
-- KEYS[1] the schedule's state (hash), KEYS[2] its internal queue (list)
-- ARGV[1] 'peek' or 'claim'
--   peek: returns {next tick ms or '', spec or '', server ms}
--   claim: ARGV[2] the next tick the claimer read (or ''), ARGV[3] the new next tick,
--   ARGV[4] the spec, ARGV[5] ticks missed, ARGV[6] the last tick due (or ''), ARGV[7..]
--   the messages to run; returns 1 if this call claimed them, 0 if another one did first
--   (or the ticks are not due on the server's clock yet).
local now = now_ms()
local next_tick = redis.call('HGET', KEYS[1], 'next') or ''
if ARGV[1] == 'peek' then
  return {next_tick, redis.call('HGET', KEYS[1], 'spec') or '', now}
end
if next_tick ~= ARGV[2] then
  return 0
end
if ARGV[6] ~= '' and now < tonumber(ARGV[2]) then
  return 0
end
local bad = check_type(KEYS[2], 'list')
if bad then
  return bad
end
redis.call('HSET', KEYS[1], 'next', ARGV[3], 'spec', ARGV[4])
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'last', ARGV[6])
end
redis.call('HINCRBY', KEYS[1], 'missed', tonumber(ARGV[5]))
if #ARGV > 6 then
  redis.call('RPUSH', KEYS[2], unpack(ARGV, 7))
  redis.call('HINCRBY', KEYS[1], 'fired', #ARGV - 6)
end
return 1
