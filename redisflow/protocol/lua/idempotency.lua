-- Consumer-side dedup, crash-safe (docs/design.md, "Dedup"): claim a key before handling,
-- mark it done after success, drop the claim after a failure.
-- KEYS[1] the key's record.  ARGV[1] 'claim' | 'done' | 'drop', ARGV[2] token, ARGV[3] ms
-- claim: 'done' if handled within the window; else ms left on another worker's claim;
--        else takes the claim for ARGV[3] ms and returns 0.
-- done:  record success for ARGV[3] ms (the window).  drop: release our claim only.
local v = redis.call('GET', KEYS[1])
if ARGV[1] == 'claim' then
  if v == 'done' then return 'done' end
  if v and v ~= ARGV[2] then return math.max(1, redis.call('PTTL', KEYS[1])) end
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 0
elseif ARGV[1] == 'done' then
  redis.call('SET', KEYS[1], 'done', 'PX', ARGV[3])
  return 1
elseif v == ARGV[2] then
  redis.call('DEL', KEYS[1])
end
return 1
