-- Schedule items ARGV[1] ms from now (server time) in a delayed set.
-- KEYS[1] delayed set.  ARGV[1] delay ms, ARGV[2..] members.
local function call_chunked(cmd, key, args)
  -- unpack() is limited by the Lua C stack (~8000 values): send long lists in chunks
  for i = 1, #args, 4000 do
    redis.call(cmd, key, unpack(args, i, math.min(i + 3999, #args)))
  end
end
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local args = {}
for i = 2, #ARGV do
  args[#args + 1] = due
  args[#args + 1] = ARGV[i]
end
call_chunked('ZADD', KEYS[1], args)
return #args / 2
