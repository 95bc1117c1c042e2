-- Add items to a priority queue with exact scores: priority * SHIFT + a per-queue sequence.
-- KEYS[1] sorted set, KEYS[2] sequence counter, KEYS[3] wake stream, KEYS[4] dedup key (opt.)
-- ARGV: [dedup window ms, only with KEYS[4]], priority1, member1, priority2, member2, ...
-- Scores stay integers below 2^53, so a lower priority always goes first and FIFO holds
-- within a level (docs/design.md, "Exact priorities").
-- Returns the number of items added, or false if the dedup key was seen in its window.
local from = 1
if #KEYS == 4 then
  if redis.call('EXISTS', KEYS[4]) == 1 then return false end
  from = 2
end
for i, t in ipairs({'zset', 'string', 'stream'}) do
  local bad = check_type(KEYS[i], t)
  if bad then return bad end
end
local count = (#ARGV - from + 1) / 2
local last = redis.call('INCRBY', KEYS[2], count)
local first = last - count + 1
local args = {}
for i = 1, count do
  local at = from + 2 * (i - 1)
  local score = tonumber(ARGV[at]) * SHIFT + first + i - 1
  args[#args + 1] = string.format('%.0f', score)
  args[#args + 1] = ARGV[at + 1]
end
call_chunked('ZADD', KEYS[1], args)
redis.call('XADD', KEYS[3], 'MAXLEN', '1', '*', 'n', count)
if #KEYS == 4 then redis.call('SET', KEYS[4], '1', 'PX', ARGV[1]) end
return count
