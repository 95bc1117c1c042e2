-- Record or retire a partition layout of a source.
-- KEYS[1] the layouts hash (source name -> JSON list of the partition counts in use,
-- current first).  ARGV[1] source name, ARGV[2] partition count, ARGV[3] '0' to make it
-- the current layout (older ones stay until drained), '1' to retire it (never the current).
-- Returns the JSON list now stored.
local list = {}
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then
  local ok, found = pcall(cjson.decode, raw)
  if ok and type(found) == 'table' then list = found end
end
local p = tonumber(ARGV[2])
local out = {}
if ARGV[3] == '0' then
  out[1] = p
  for _, q in ipairs(list) do
    if q ~= p then out[#out + 1] = q end
  end
else
  for i, q in ipairs(list) do
    if q ~= p or i == 1 then out[#out + 1] = q end
  end
end
local encoded = cjson.encode(out)
if #out == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return '[]'
end
redis.call('HSET', KEYS[1], ARGV[1], encoded)
return encoded
