-- Reclaim stream entries idle for ARGV[3] ms (their consumer died) with XAUTOCLAIM, and
-- return them with their delivery counts, which decide the dead-letter verdict.
-- KEYS[1] stream.  ARGV[1] group, ARGV[2] consumer, ARGV[3] min idle ms, ARGV[4] cursor,
-- ARGV[5] count.
-- Returns {next cursor, {{id, fields, deliveries}...}, {deleted ids...}}. On Redis 7 the
-- third element of XAUTOCLAIM lists pending ids whose entries were trimmed; they leave the PEL.
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local out = {}
for _, entry in ipairs(r[2]) do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
  local count = 1
  if #p > 0 then count = p[1][4] end
  out[#out + 1] = {entry[1], entry[2], count}
end
return {r[1], out, r[3] or {}}
