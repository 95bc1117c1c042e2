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
local keyed = {}
for i, id in ipairs(ids) do
  local dash = string.find(id, '-', 1, true)
  keyed[i] = {tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1)), id}
end
-- A strict order (table.sort needs one): ids are unique, so no two keys are equal.
local function older(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end
if ARGV[2] == '1' then
  table.sort(keyed, function(a, b) return older(b, a) end)
else
  table.sort(keyed, older)
end
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
