-- Housekeeping of a list or priority queue, run by each worker a few times a second:
-- renew this worker's lease, move due delayed messages (retries, delayed enqueues) back to
-- the queue, and report workers whose lease expired.
-- KEYS[1] queue, KEYS[2] delayed set, KEYS[3] leases, KEYS[4] sequence (priority), KEYS[5] wake
-- ARGV[1] 'list' or 'zset' ('glist' or 'gzset' for fair groups: group_tick.lua moves their
-- delayed messages), ARGV[2] worker id, ARGV[3] lease ms, ARGV[4] max to move
-- Delayed members of a priority queue are '<priority>:<item>'.
-- Returns {ms until the next delayed message or -1, moved, dead worker ids...}.
local now = now_ms()
-- A full Redis (maxmemory, noeviction) refuses a script's first write that may grow memory,
-- not the ones after a first write (docs/design.md, "Out of memory"): this write, which
-- changes nothing, lets the lease through, so a worker draining a full Redis stays
-- recoverable by its peers if it dies.
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(-inf')
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[2])
local zset = ARGV[1] == 'zset' or ARGV[1] == 'gzset'
local bad = check_type(KEYS[1], zset and 'zset' or 'list')
local due = {}
if not bad and string.sub(ARGV[1], 1, 1) ~= 'g' then
  due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
end
if #due > 0 then
  redis.call('ZREM', KEYS[2], unpack(due))
  if zset then
    local last = redis.call('INCRBY', KEYS[4], #due)
    local args = {}
    for i, member in ipairs(due) do
      local sep = string.find(member, ':', 1, true)
      local score = tonumber(string.sub(member, 1, sep - 1)) * SHIFT + last - #due + i
      args[#args + 1] = string.format('%.0f', score)
      args[#args + 1] = string.sub(member, sep + 1)
    end
    call_chunked('ZADD', KEYS[1], args)
    redis.call('XADD', KEYS[5], 'MAXLEN', '1', '*', 'n', #due)
  else
    call_chunked('RPUSH', KEYS[1], due)
  end
end
local result = {-1, #due}
local next_ = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #next_ > 0 then result[1] = math.max(0, tonumber(next_[2]) - now) end
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. now, 'LIMIT', 0, 8)
for _, w in ipairs(dead) do result[#result + 1] = w end
return result
