-- Count the messages of a priority queue per level, exactly, without scanning members.
-- KEYS[1] sorted set (scores priority * SHIFT + seq)
-- Returns {level, count, level, count, ...} for the levels in use, lowest first.
local out = {}
local floor = '-inf'
while true do
  local head = redis.call('ZRANGEBYSCORE', KEYS[1], floor, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #head == 0 then break end
  local level = math.floor(tonumber(head[2]) / SHIFT)
  local upper = (level + 1) * SHIFT
  out[#out + 1] = level
  out[#out + 1] = redis.call('ZCOUNT', KEYS[1], level * SHIFT, '(' .. string.format('%.0f', upper))
  floor = string.format('%.0f', upper)
end
return out
