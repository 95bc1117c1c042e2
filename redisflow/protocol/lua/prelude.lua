-- Prepended to every script by protocol/scripts.py (SHIFT is filled in from priority.py).
local SHIFT = {SHIFT}
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function call_chunked(cmd, key, args)
  -- unpack() is limited by the Lua C stack (~8000 values): send long lists in chunks
  for i = 1, #args, 4000 do
    redis.call(cmd, key, unpack(args, i, math.min(i + 3999, #args)))
  end
end
local function check_type(key, expected)
  -- Fail before any write when a key holds another type (a script that fails half way
  -- keeps what it wrote: Redis does not roll it back).
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= expected then
    return redis.error_reply('WRONGTYPE key ' .. key .. ' holds a ' .. t .. ', not a ' .. expected)
  end
end
