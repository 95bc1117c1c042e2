-- Ack finished batches, release the lease tokens of finished messages, and lease up to n
-- messages of a fair-group queue into a new batch list, round robin over the ring.
-- KEYS[1..7] as lib_groups.lua, KEYS[8] the new batch list, KEYS[9] the worker's batch set,
-- KEYS[10..] finished batches.
-- ARGV[1] base, ARGV[2] mode, ARGV[3] n (0: only ack), ARGV[4] concurrency limit per group
-- (0: none), ARGV[5] rate limit per group (0: none), ARGV[6] its window in us, ARGV[7] the
-- number r of released messages, ARGV[8 .. 7+2r] their group/token pairs.
-- Each visit of a group takes its share of what is left to lease (what is left divided by
-- the groups left to visit), within its limits; a group that still has messages and room
-- goes to the end of the ring, one at its concurrency limit leaves the ring (a release
-- offers it again), one at its rate limit is parked until its oldest grant leaves the
-- window. Up to 4 rounds fill the batch when some groups hold fewer than their share.
-- The batch list holds group/item pairs (list) or group/score/item triples (zset), and so
-- does the reply; an empty lease returns {the id of the last wake-up} instead.
for i = 10, #KEYS do
  redis.call('DEL', KEYS[i])
  redis.call('SREM', KEYS[9], KEYS[i])
end
local climit, rlimit, window = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local released = tonumber(ARGV[7])
local woken = 0
for i = 8, 7 + 2 * released, 2 do
  redis.call('SREM', tokens_key(ARGV[i]), ARGV[i + 1])
  if offer(ARGV[i], climit) then woken = woken + 1 end
end
if woken > 0 then wake(woken) end
local n = tonumber(ARGV[3])
if n <= 0 then return {} end
local now_us = 0
if rlimit > 0 then
  local t = redis.call('TIME')
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local any_paused = redis.call('SCARD', PAUSED) > 0
local batch, taken, index = {}, 0, 0
for _ = 1, 4 do
  if taken >= n then break end
  local groups = redis.call('ZRANGE', RING, 0, n - taken - 1)
  if #groups == 0 then break end
  local turn = tonumber(redis.call('INCRBY', TURN, #groups)) - #groups
  local progress = false
  for j, g in ipairs(groups) do
    if taken >= n then break end
    local share = math.ceil((n - taken) / (#groups - j + 1))
    local paused = any_paused and redis.call('SISMEMBER', PAUSED, g) == 1
    local q = paused and 0 or share
    local busy = 0
    if q > 0 and climit > 0 then
      busy = redis.call('SCARD', tokens_key(g))
      q = math.min(q, climit - busy)
    end
    local log, granted = grants_key(g), 0
    if q > 0 and rlimit > 0 then
      redis.call('ZREMRANGEBYSCORE', log, '-inf', string.format('(%.0f', now_us - window))
      granted = redis.call('ZCARD', log)
      q = math.min(q, rlimit - granted)
    end
    local got, more = {}, false
    if q > 0 then
      local key = group_key(g)
      if ZSET then
        got = redis.call('ZRANGE', key, 0, q, 'WITHSCORES')  -- one more: is there more?
        more = #got > 2 * q
        if more then got[#got] = nil; got[#got] = nil end
        if #got > 0 then redis.call('ZREMRANGEBYRANK', key, 0, #got / 2 - 1) end
      else
        got = redis.call('LRANGE', key, 0, q)
        more = #got > q
        if more then got[#got] = nil end
        if #got > 0 then redis.call('LTRIM', key, #got, -1) end
      end
    end
    local count = #got / STEP
    if count > 0 then
      local tokens, grants = {}, {}
      for k = 1, #got, STEP do
        local token = KEYS[8] .. '#' .. index
        index = index + 1
        batch[#batch + 1] = g
        if ZSET then
          batch[#batch + 1] = got[k + 1]
          batch[#batch + 1] = got[k]
        else
          batch[#batch + 1] = got[k]
        end
        if climit > 0 then tokens[#tokens + 1] = token end
        if rlimit > 0 then
          grants[#grants + 1] = string.format('%.0f', now_us)
          grants[#grants + 1] = token
        end
      end
      if climit > 0 then call_chunked('SADD', tokens_key(g), tokens) end
      if rlimit > 0 then
        call_chunked('ZADD', log, grants)
        redis.call('PEXPIRE', log, math.ceil(window / 1000) + 1)
      end
      resize(g, -count)
      taken = taken + count
      progress = true
    end
    if paused or q > 0 and not more then
      redis.call('ZREM', RING, g)  -- paused, or emptied (a push offers it again)
    elseif climit > 0 and busy + count >= climit then
      redis.call('ZREM', RING, g)  -- at its concurrency limit: a release offers it again
    elseif rlimit > 0 and granted + count >= rlimit then
      redis.call('ZREM', RING, g)  -- at its rate limit: parked until a grant leaves
      local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
      local due = math.ceil((tonumber(oldest[2]) + window + 1) / 1000)
      redis.call('ZADD', PARK, due, g)
    else
      redis.call('ZADD', RING, turn + j, g)  -- to the end of the ring
    end
  end
  if not progress then break end
end
if #batch == 0 then
  local last = redis.call('XREVRANGE', WAKE, '+', '-', 'COUNT', 1)
  if #last == 0 then return {'0-0'} end
  return {last[1][1]}
end
call_chunked('RPUSH', KEYS[8], batch)
redis.call('SADD', KEYS[9], KEYS[8])
return batch
