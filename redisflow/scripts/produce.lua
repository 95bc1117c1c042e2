-- Run a producer's commands atomically, unless its dedup key was seen within the window.
-- ARGV[1] dedup window ms, or 0 for no dedup; then each command as: argument count,
-- arguments... KEYS: the dedup key first when there is one, then every key the commands
-- touch (declared for Redis Cluster: all in one slot).
-- An argument '\0id' is replaced by the reply of the first command (an XADD's entry id, for
-- the index SADDs); '\0due:<ms>' by the server time in ms plus <ms> (delayed enqueues).
-- Returns false for a duplicate, else the reply of the first command.
if ARGV[1] ~= '0' then
  if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return false end
end
local now
local first
local i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local args = {}
  for j = 1, n do
    local a = ARGV[i + j]
    if a == '\0id' then
      a = first
    elseif string.sub(a, 1, 5) == '\0due:' then
      if not now then
        local t = redis.call('TIME')
        now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      end
      a = string.format('%.0f', now + tonumber(string.sub(a, 6)))
    end
    args[j] = a
  end
  local reply = redis.call(unpack(args))
  if first == nil then first = reply end
  i = i + n + 1
end
return first
