-- Schedule items ARGV[1] ms from now (server time) in a delayed set.
-- KEYS[1] delayed set.  ARGV[1] delay ms, ARGV[2..] members.
local bad = check_type(KEYS[1], 'zset')
if bad then return bad end
local due = now_ms() + tonumber(ARGV[1])
local args = {}
for i = 2, #ARGV do
  args[#args + 1] = due
  args[#args + 1] = ARGV[i]
end
call_chunked('ZADD', KEYS[1], args)
return #args / 2
