-- Ack finished batches and lease the up to ARGV[1] most urgent items of a priority queue.
-- KEYS[1] sorted set, KEYS[2] new batch list, KEYS[3] worker's batch set, KEYS[4] wake stream,
-- KEYS[5..] finished batches.   ARGV[1] max items (0: only ack)
-- Returns {member1, score1, member2, score2, ...}, or {wake_id} when the queue is empty:
-- the id of the last wake-up, from which a blocked consumer waits (XREAD) race-free.
-- The batch list holds score/member pairs so a release restores the exact order.
for i = 5, #KEYS do
  redis.call('DEL', KEYS[i])
  redis.call('SREM', KEYS[3], KEYS[i])
end
local n = tonumber(ARGV[1])
if n <= 0 then return {} end
local items = redis.call('ZRANGE', KEYS[1], 0, n - 1, 'WITHSCORES')
if #items == 0 then
  local last = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1)
  if #last == 0 then return {'0-0'} end
  return {last[1][1]}
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, #items / 2 - 1)
local pairs_ = {}
for i = 1, #items, 2 do
  pairs_[#pairs_ + 1] = items[i + 1]
  pairs_[#pairs_ + 1] = items[i]
end
call_chunked('RPUSH', KEYS[2], pairs_)
redis.call('SADD', KEYS[3], KEYS[2])
return items
