-- Run a producer's commands atomically, unless its dedup key was seen within the window.
-- KEYS: the dedup key first when there is one, then every key the commands touch (declared
-- for Redis Cluster: all in one slot).
-- ARGV[1] dedup window ms, or 0 for no dedup; ARGV[2] n, then the expected types of the
-- first n keys after the dedup key ('-' for none); then each command as: argument count,
-- arguments...
-- Every check comes before the first write, and the dedup key is set last: a call that
-- fails leaves nothing behind (Redis does not roll back a script that fails half way).
-- An argument '\0id' is replaced by the reply of the first command (an XADD's entry id, for
-- the index SADDs); '\0due:<ms>' by the server time in ms plus <ms> (delayed enqueues).
-- Returns false for a duplicate, else the replies of the commands.
local dedup = ARGV[1] ~= '0'
local k0 = dedup and 1 or 0
if dedup and redis.call('EXISTS', KEYS[1]) == 1 then return false end
local typed = tonumber(ARGV[2])
for i = 1, typed do
  local t = ARGV[2 + i]
  if t ~= '-' then
    local bad = check_type(KEYS[k0 + i], t)
    if bad then return bad end
  end
end
local now
local first
local replies = {}
local i = 3 + typed
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local args = {}
  for j = 1, n do
    local a = ARGV[i + j]
    if a == '\0id' then
      a = first
    elseif string.sub(a, 1, 5) == '\0due:' then
      if not now then now = now_ms() end
      a = string.format('%.0f', now + tonumber(string.sub(a, 6)))
    end
    args[j] = a
  end
  local reply = redis.call(unpack(args))
  if first == nil then first = reply end
  replies[#replies + 1] = reply
  i = i + n + 1
end
if dedup then redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end
return replies
