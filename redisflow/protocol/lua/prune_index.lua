-- Drop index entries of a stream whose entries were trimmed (ids below the first entry).
-- KEYS[1] stream, KEYS[2] the stream's set of index keys, KEYS[3..] those index keys
-- Returns the number of ids removed. Index keys left empty leave the registry.
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local function parse(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local fms, fseq = math.huge, 0
if #first > 0 then fms, fseq = parse(first[1][1]) end
local removed = 0
for i = 3, #KEYS do
  local old = {}
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[i])) do
    local ms, seq = parse(id)
    if ms < fms or (ms == fms and seq < fseq) then old[#old + 1] = id end
  end
  for j = 1, #old, 4000 do
    redis.call('SREM', KEYS[i], unpack(old, j, math.min(j + 3999, #old)))
  end
  removed = removed + #old
  if redis.call('EXISTS', KEYS[i]) == 0 then redis.call('SREM', KEYS[2], KEYS[i]) end
end
return removed
