-- Add items to a priority queue with exact scores: priority * 2^40 + a per-queue sequence.
-- KEYS[1] sorted set, KEYS[2] sequence counter, KEYS[3] wake stream
-- ARGV: priority1, member1, priority2, member2, ...
-- Scores stay integers below 2^53, so a lower priority always goes first and FIFO holds
-- within a level (REDIS-NOTES: priority*1e6 + time.time() gets both wrong).
local function call_chunked(cmd, key, args)
  -- unpack() is limited by the Lua C stack (~8000 values): send long lists in chunks
  for i = 1, #args, 4000 do
    redis.call(cmd, key, unpack(args, i, math.min(i + 3999, #args)))
  end
end
local count = #ARGV / 2
local last = redis.call('INCRBY', KEYS[2], count)
local first = last - count + 1
local args = {}
for i = 1, count do
  local score = tonumber(ARGV[2 * i - 1]) * 1099511627776 + first + i - 1
  args[#args + 1] = string.format('%.0f', score)
  args[#args + 1] = ARGV[2 * i]
end
call_chunked('ZADD', KEYS[1], args)
redis.call('XADD', KEYS[3], 'MAXLEN', '1', '*', 'n', count)
return count
