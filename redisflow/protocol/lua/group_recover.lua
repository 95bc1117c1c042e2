-- Give the batches of a dead worker of a fair-group queue (its lease expired) back to the
-- head of their groups, counting the delivery that died (as recover.lua), and release its
-- lease tokens: the groups' in-flight counts no longer include its messages. A message
-- whose count passes max_attempts moves into a batch of the recovering worker instead,
-- which dead-letters it.
-- KEYS[1..7] as lib_groups.lua, KEYS[8] leases, KEYS[9] the dead worker's batch set,
-- KEYS[10] a new batch list of the recovering worker, KEYS[11] its batch set,
-- KEYS[12..] the dead worker's batches.
-- ARGV[1] base, ARGV[2] mode, ARGV[3] dead worker id, ARGV[4] max attempts, ARGV[5]
-- concurrency limit (0: none).
-- Returns {-1} if the lease has not expired, else {messages given back, then the
-- over-limit entries as group_fetch.lua returns them}.
local expiry = redis.call('ZSCORE', KEYS[8], ARGV[3])
local now = now_ms()
if expiry and tonumber(expiry) > now then return {-1} end
local bad = check_type(SOURCE, ZSET and 'zset' or 'list')
if bad then return bad end
local max_attempts, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local width = ZSET and 3 or 2
local back, order, over = {}, {}, {}
local given = 0
for b = 12, #KEYS do
  local entries = redis.call('LRANGE', KEYS[b], 0, -1)
  for k = 1, #entries, width do
    local g = entries[k]
    redis.call('SREM', tokens_key(g), KEYS[b] .. '#' .. ((k - 1) / width))
    local item, attempt = counted(entries[k + width - 1], now)
    if attempt > max_attempts then
      over[#over + 1] = g
      if ZSET then over[#over + 1] = entries[k + 1] end
      over[#over + 1] = item
    else
      local items = back[g]
      if not items then
        items = {}
        back[g] = items
        order[#order + 1] = g
      end
      if ZSET then items[#items + 1] = entries[k + 1] end
      items[#items + 1] = item
      given = given + 1
    end
  end
  redis.call('DEL', KEYS[b])
  redis.call('SREM', KEYS[9], KEYS[b])
end
local woken = 0
for _, g in ipairs(order) do
  give_back(g, back[g])
  if offer(g, limit) then woken = woken + 1 end
end
if woken > 0 then wake(woken) end
if #over > 0 then
  call_chunked('RPUSH', KEYS[10], over)
  redis.call('SADD', KEYS[11], KEYS[10])
end
if redis.call('SCARD', KEYS[9]) == 0 then
  redis.call('DEL', KEYS[9])
  redis.call('ZREM', KEYS[8], ARGV[3])
end
local result = {given}
for _, v in ipairs(over) do result[#result + 1] = v end
return result
