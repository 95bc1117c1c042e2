-- Entries of a stream found through its indexes, in stream order, in one call.
-- KEYS[1] stream, KEYS[2..] index sets (their intersection is searched)
-- ARGV[1] limit, ARGV[2] '1' for newest first
-- Ids whose entries were trimmed or deleted are removed from the sets, not returned.
local ids
if #KEYS == 2 then
  ids = redis.call('SMEMBERS', KEYS[2])
else
  ids = redis.call('SINTER', unpack(KEYS, 2))
end
local function parse(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local keyed = {}
for i, id in ipairs(ids) do
  local ms, seq = parse(id)
  keyed[i] = {ms, seq, id}
end
local newest = ARGV[2] == '1'
table.sort(keyed, function(a, b)
  if a[1] ~= b[1] then return (a[1] < b[1]) ~= newest end
  return (a[2] < b[2]) ~= newest
end)
local limit = tonumber(ARGV[1])
local out = {}
for _, k in ipairs(keyed) do
  if #out >= limit then break end
  local entry = redis.call('XRANGE', KEYS[1], k[3], k[3])
  if #entry == 0 then
    for j = 2, #KEYS do redis.call('SREM', KEYS[j], k[3]) end
  else
    out[#out + 1] = entry[1]
  end
end
return out
