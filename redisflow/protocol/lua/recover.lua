-- Give the batches of a dead worker (its lease expired) back to their queue, counting the
-- delivery that died: each message's envelope attempt goes up by one, as a stream's
-- delivery count does. A message whose count now passes the handler's max_attempts (a
-- message that kills its workers, or was held by one that died that often) is not given
-- back: it moves into a batch of the recovering worker, who dead-letters it.
-- KEYS[1] queue (list or sorted set), KEYS[2] leases, KEYS[3] the dead worker's batch set,
-- KEYS[4] a new batch list of the recovering worker, KEYS[5] its batch set,
-- KEYS[6..] the dead worker's batches.
-- ARGV[1] 'list' or 'zset', ARGV[2] dead worker id, ARGV[3] max attempts.
-- Returns {-1} if the lease has not expired, else {messages given back, over-limit items
-- as the fetch scripts return them: items of a list, member/score pairs of a sorted set}.
local zset = ARGV[1] == 'zset'
local max_attempts = tonumber(ARGV[3])
local expiry = redis.call('ZSCORE', KEYS[2], ARGV[2])
local now = now_ms()
if expiry and tonumber(expiry) > now then return {-1} end
local bad = check_type(KEYS[1], zset and 'zset' or 'list')
if bad then return bad end

local back, over, kept = {}, {}, {}
local step = zset and 2 or 1
for k = 6, #KEYS do
  local items = redis.call('LRANGE', KEYS[k], 0, -1)
  for i = 1, #items, step do
    local score = zset and items[i] or nil
    local item, attempt = counted(zset and items[i + 1] or items[i], now)
    if attempt > max_attempts then
      if zset then
        over[#over + 1] = item
        over[#over + 1] = score
        kept[#kept + 1] = score
        kept[#kept + 1] = item
      else
        over[#over + 1] = item
        kept[#kept + 1] = item
      end
    elseif zset then
      back[#back + 1] = score
      back[#back + 1] = item
    else
      back[#back + 1] = item
    end
  end
  redis.call('DEL', KEYS[k])
  redis.call('SREM', KEYS[3], KEYS[k])
end
if #back > 0 then
  if zset then
    call_chunked('ZADD', KEYS[1], back)
  else
    local rev = {}
    for i = #back, 1, -1 do rev[#rev + 1] = back[i] end
    call_chunked('LPUSH', KEYS[1], rev)
  end
end
if #kept > 0 then
  call_chunked('RPUSH', KEYS[4], kept)
  redis.call('SADD', KEYS[5], KEYS[4])
end
if redis.call('SCARD', KEYS[3]) == 0 then
  redis.call('DEL', KEYS[3])
  redis.call('ZREM', KEYS[2], ARGV[2])
end
local result = {zset and #back / 2 or #back}
for _, v in ipairs(over) do result[#result + 1] = v end
return result
