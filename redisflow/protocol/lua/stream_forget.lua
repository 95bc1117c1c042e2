-- Delete the consumers of a group that hold nothing and were not seen for ARGV[2] ms: every
-- restart of a worker named host-pid leaves one behind. Atomic, so a consumer that took an
-- entry meanwhile is kept (deleting it would drop its pending entries); a live consumer
-- that was deleted anyway is created again by its next XREADGROUP.
-- KEYS[1] stream.  ARGV[1] group, ARGV[2] min idle ms, ARGV[3] our own consumer (kept).
-- Returns the names deleted.
local gone = {}
local min_idle = tonumber(ARGV[2])
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['pending'] == 0 and info['idle'] >= min_idle and info['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    gone[#gone + 1] = info['name']
  end
end
return gone
