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
-- window, one that gave less than asked is empty and leaves it (a push offers it again).
-- Up to 4 rounds fill the batch when some groups hold less than their share.
-- The batch is a run per group, the smallest first (a group's few messages are not queued
-- behind another's share): the group, its count, then its items (list) or score/item pairs
-- (zset); the batch list holds the same, and so does the reply. Message i of the batch
-- (from 0) has the lease token '<batch list>#i'. An empty lease returns {the id of the
-- last wake-up} instead.
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
local order, leased, counts = {}, {}, {}  -- groups in the order of their first visit
for _ = 1, 4 do
  if taken >= n then break end
  local groups = redis.call('ZRANGE', RING, 0, n - taken - 1)
  if #groups == 0 then break end
  local turn = tonumber(redis.call('INCRBY', TURN, #groups)) - #groups
  local rotate, leave = {}, {}  -- the ring's changes, written once per round
  local progress = false
  for j, g in ipairs(groups) do
    local q = math.ceil((n - taken) / (#groups - j + 1))
    local paused = q > 0 and any_paused and redis.call('SISMEMBER', PAUSED, g) == 1
    if paused then q = 0 end
    -- what this call leased of g already counts too (its tokens and grants come last)
    local already = counts[g] or 0
    local busy, granted, log = already, already, nil
    if q > 0 and climit > 0 then
      busy = busy + redis.call('SCARD', tokens_key(g))
      q = math.min(q, climit - busy)
    end
    if q > 0 and rlimit > 0 then
      log = grants_key(g)
      redis.call('ZREMRANGEBYSCORE', log, '-inf', string.format('(%.0f', now_us - window))
      granted = granted + redis.call('ZCARD', log)
      q = math.min(q, rlimit - granted)
    end
    local count = 0
    if q > 0 then
      local got, key = nil, group_key(g)
      if ZSET then
        got = redis.call('ZPOPMIN', key, q)  -- member/score pairs
      elseif q <= 4 then  -- one call (popping many shifts the rest of a list node each time)
        got = redis.call('LPOP', key, q) or {}
      else
        got = redis.call('LRANGE', key, 0, q - 1)
        if #got > 0 then redis.call('LTRIM', key, #got, -1) end
      end
      count = #got / STEP
      if count > 0 then
        local mine = leased[g]
        if not mine then
          mine = {}
          leased[g] = mine
          order[#order + 1] = g
        end
        if ZSET then
          for k = 1, #got, 2 do
            mine[#mine + 1] = got[k + 1]
            mine[#mine + 1] = got[k]
          end
        else
          for k = 1, #got do mine[#mine + 1] = got[k] end
        end
        counts[g] = already + count
        taken = taken + count
        progress = true
      end
    end
    if paused then
      leave[#leave + 1] = g
    elseif q > 0 and count < q then
      leave[#leave + 1] = g  -- emptied: a push offers it again
      if g ~= '' then redis.call('SREM', HELD, g) end
    elseif climit > 0 and busy + count >= climit then
      leave[#leave + 1] = g  -- at its concurrency limit: a release offers it again
    elseif rlimit > 0 and granted + count >= rlimit then
      leave[#leave + 1] = g  -- at its rate limit: parked until a grant leaves
      local oldest = redis.call('ZRANGE', log or grants_key(g), 0, 0, 'WITHSCORES')
      local first = #oldest > 0 and tonumber(oldest[2]) or now_us
      redis.call('ZADD', PARK, math.ceil((first + window + 1) / 1000), g)
    else
      rotate[#rotate + 1] = turn + j  -- to the end of the ring
      rotate[#rotate + 1] = g
    end
    if taken >= n then break end
  end
  if #leave > 0 then call_chunked('ZREM', RING, leave) end
  if #rotate > 0 then call_chunked('ZADD', RING, rotate) end
  if not progress then break end
end
if #order == 0 then
  local last = redis.call('XREVRANGE', WAKE, '+', '-', 'COUNT', 1)
  if #last == 0 then return {'0-0'} end
  return {last[1][1]}
end
-- The runs, smallest first (ties in the order of the visits): a numeric sort of
-- count * 2^20 + rank, no comparison function per pair.
local keys_, least, most = {}, n, 0
for i, g in ipairs(order) do
  keys_[i] = counts[g] * 1048576 + i
  least, most = math.min(least, counts[g]), math.max(most, counts[g])
end
if least < most then
  table.sort(keys_)
  local sorted = {}
  for i, k in ipairs(keys_) do sorted[i] = order[k % 1048576] end
  order = sorted
end
local batch, index = {}, 0
for _, g in ipairs(order) do
  local mine, count = leased[g], counts[g]
  batch[#batch + 1] = g
  batch[#batch + 1] = count
  for k = 1, #mine do batch[#batch + 1] = mine[k] end
  if climit > 0 or rlimit > 0 then
    local tokens, grants = {}, {}
    local at = string.format('%.0f', now_us)
    for i = index, index + count - 1 do
      local token = KEYS[8] .. '#' .. i
      tokens[#tokens + 1] = token
      grants[#grants + 1] = at
      grants[#grants + 1] = token
    end
    if climit > 0 then call_chunked('SADD', tokens_key(g), tokens) end
    if rlimit > 0 then
      call_chunked('ZADD', grants_key(g), grants)
      redis.call('PEXPIRE', grants_key(g), math.ceil(window / 1000) + 1)
    end
  end
  index = index + count
end
call_chunked('RPUSH', KEYS[8], batch)
redis.call('SADD', KEYS[9], KEYS[8])
return batch
