-- Change the record of a source's partition layouts.
-- KEYS[1] the layouts hash: source name -> JSON list of the layouts in use, current first,
-- and of those retired. A layout is P (the first tag scheme; 1 is the plain key) or 'v2/P';
-- a retired one is 'retired:<layout>'.
-- ARGV[1] source name, ARGV[2] a layout, ARGV[3] what to do with it:
--   'current': make it the current layout (the others in use stay, to be drained);
--   'known':   add it as an old layout if it is not in use (current if none is);
--   'retire':  retire an old layout (never the current one).
-- Returns the JSON list now stored.
local list = {}
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then
  local ok, found = pcall(cjson.decode, raw)
  if ok and type(found) == 'table' then list = found end
end
local layout, how = ARGV[2], ARGV[3]
local retired = 'retired:' .. layout
local function value(s)  -- the first scheme's layouts stay JSON numbers (older readers)
  return tonumber(s) or s
end
local used, gone = {}, {}
for _, entry in ipairs(list) do
  local s = tostring(entry)
  if string.sub(s, 1, 8) == 'retired:' then
    if s ~= retired or how == 'retire' then gone[#gone + 1] = entry end
  else
    used[#used + 1] = entry
  end
end
local out = {}
if how == 'current' then
  out[1] = value(layout)
  for _, entry in ipairs(used) do
    if tostring(entry) ~= layout then out[#out + 1] = entry end
  end
else
  local found = false
  for i, entry in ipairs(used) do
    if tostring(entry) == layout then
      found = true
      if how == 'retire' and i > 1 then
        gone[#gone + 1] = retired
      else
        out[#out + 1] = entry
      end
    else
      out[#out + 1] = entry
    end
  end
  if how == 'known' and not found then out[#out + 1] = value(layout) end
end
for _, entry in ipairs(gone) do out[#out + 1] = entry end
if #out == 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return '[]'
end
local encoded = cjson.encode(out)
redis.call('HSET', KEYS[1], ARGV[1], encoded)
return encoded
