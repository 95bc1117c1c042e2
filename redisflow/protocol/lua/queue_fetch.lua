-- Ack finished batches and lease up to ARGV[1] items of a list queue, atomically.
-- KEYS[1] queue, KEYS[2] new batch list, KEYS[3] worker's batch set, KEYS[4..] finished batches
-- ARGV[1] max items (0: only ack)
-- The items move into a batch list owned by this worker; if the worker dies, the batch is
-- moved back to the queue by recover.lua once its lease expires.
for i = 4, #KEYS do
  redis.call('DEL', KEYS[i])
  redis.call('SREM', KEYS[3], KEYS[i])
end
local n = tonumber(ARGV[1])
if n <= 0 then return {} end
local items = redis.call('LRANGE', KEYS[1], 0, n - 1)
if #items > 0 then
  redis.call('LTRIM', KEYS[1], #items, -1)
  call_chunked('RPUSH', KEYS[2], items)
  redis.call('SADD', KEYS[3], KEYS[2])
end
return items
