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
local taken = 0
local order, leased = {}, {}  -- groups in the order of their first visit, their items
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
    -- what this call leased of g already counts too (its tokens and grants are written last)
    local already = leased[g] and #leased[g] / STEP or 0
    local busy = already
    if q > 0 and climit > 0 then
      busy = busy + redis.call('SCARD', tokens_key(g))
      q = math.min(q, climit - busy)
    end
    local log, granted = grants_key(g), already
    if q > 0 and rlimit > 0 then
      redis.call('ZREMRANGEBYSCORE', log, '-inf', string.format('(%.0f', now_us - window))
      granted = granted + redis.call('ZCARD', log)
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
      local mine = leased[g]
      if not mine then
        mine = {}
        leased[g] = mine
        order[#order + 1] = g
      end
      for k = 1, #got do mine[#mine + 1] = got[k] end
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
      local first = #oldest > 0 and tonumber(oldest[2]) or now_us
      redis.call('ZADD', PARK, math.ceil((first + window + 1) / 1000), g)
    else
      redis.call('ZADD', RING, turn + j, g)  -- to the end of the ring
    end
  end
  if not progress then break end
end
-- The batch interleaves the groups (one message of each in turn), so that a group's few
-- messages are not queued locally behind another's share; each group keeps its order.
-- Each message gets its lease token (and its grant) at its place in the batch.
local batch, index, at = {}, 0, 1
local tokens, grants = {}, {}
local left = #order
while left > 0 do
  left = 0
  for _, g in ipairs(order) do
    local mine = leased[g]
    if at <= #mine then
      local token = KEYS[8] .. '#' .. index
      index = index + 1
      batch[#batch + 1] = g
      if ZSET then
        batch[#batch + 1] = mine[at + 1]
        batch[#batch + 1] = mine[at]
      else
        batch[#batch + 1] = mine[at]
      end
      if climit > 0 then
        tokens[g] = tokens[g] or {}
        tokens[g][#tokens[g] + 1] = token
      end
      if rlimit > 0 then
        grants[g] = grants[g] or {}
        grants[g][#grants[g] + 1] = string.format('%.0f', now_us)
        grants[g][#grants[g] + 1] = token
      end
      if at + STEP <= #mine then left = left + 1 end
    end
  end
  at = at + STEP
end
for g, list in pairs(tokens) do call_chunked('SADD', tokens_key(g), list) end
for g, list in pairs(grants) do
  call_chunked('ZADD', grants_key(g), list)
  redis.call('PEXPIRE', grants_key(g), math.ceil(window / 1000) + 1)
end
if #batch == 0 then
  local last = redis.call('XREVRANGE', WAKE, '+', '-', 'COUNT', 1)
  if #last == 0 then return {'0-0'} end
  return {last[1][1]}
end
call_chunked('RPUSH', KEYS[8], batch)
redis.call('SADD', KEYS[9], KEYS[8])
return batch
