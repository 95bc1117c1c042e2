-- Mark a message of a source (one partition) cancelled for ARGV[3] ms, atomically with the
-- sweep of marks past their deadline and a new version (docs/design.md, "Cancellation").
-- KEYS[1] the marks (hash: id -> "<deadline ms>:<JSON [reason, group]>"), KEYS[2] version.
-- ARGV[1] message id, ARGV[2] JSON [reason, group], ARGV[3] ttl ms.
-- Both keys expire with the last mark's deadline, so nothing is left after the TTL; the
-- version is the server time in ms (or one more than the last one), so it never repeats
-- while a worker remembers it, even after the keys expired.
local bad = check_type(KEYS[1], 'hash')
if bad then return bad end
local now = now_ms()
local deadline = now + tonumber(ARGV[3])
local last = deadline
local flat = redis.call('HGETALL', KEYS[1])
local gone = {}
for i = 1, #flat, 2 do
  local due = tonumber(string.match(flat[i + 1], '^(%d+):'))
  if due == nil or due <= now then
    gone[#gone + 1] = flat[i]
  elseif due > last then
    last = due
  end
end
if #gone > 0 then call_chunked('HDEL', KEYS[1], gone) end
redis.call('HSET', KEYS[1], ARGV[1], deadline .. ':' .. ARGV[2])
local version = math.max(now, (tonumber(redis.call('GET', KEYS[2])) or 0) + 1)
redis.call('SET', KEYS[2], version)
redis.call('PEXPIREAT', KEYS[1], last)
redis.call('PEXPIREAT', KEYS[2], last)
return version
