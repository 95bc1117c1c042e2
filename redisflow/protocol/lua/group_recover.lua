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
-- over-limit messages as group_fetch.lua returns them (runs)}.
local expiry = redis.call('ZSCORE', KEYS[8], ARGV[3])
local now = now_ms()
if expiry and tonumber(expiry) > now then return {-1} end
local bad = check_type(SOURCE, ZSET and 'zset' or 'list')
if bad then return bad end
local max_attempts, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local back, order, over, over_order = {}, {}, {}, {}
local given = 0
local function add(lists, names, g, score, item)
  local items = lists[g]
  if not items then
    items = {}
    lists[g] = items
    names[#names + 1] = g
  end
  if ZSET then items[#items + 1] = score end
  items[#items + 1] = item
end
for b = 12, #KEYS do
  each_leased(redis.call('LRANGE', KEYS[b], 0, -1), function(g, index, score, item)
    if limit > 0 then redis.call('SREM', tokens_key(g), KEYS[b] .. '#' .. index) end
    local again, attempt = counted(item, now)
    if attempt > max_attempts then
      add(over, over_order, g, score, again)
    else
      add(back, order, g, score, again)
      given = given + 1
    end
  end)
  redis.call('DEL', KEYS[b])
  redis.call('SREM', KEYS[9], KEYS[b])
end
local woken = 0
for _, g in ipairs(order) do
  give_back(g, back[g])
  if offer(g, limit) then woken = woken + 1 end
end
if woken > 0 then wake(woken) end
local kept = {}  -- as group_fetch.lua's runs
for _, g in ipairs(over_order) do
  kept[#kept + 1] = g
  kept[#kept + 1] = #over[g] / STEP
  for _, v in ipairs(over[g]) do kept[#kept + 1] = v end
end
if #kept > 0 then
  call_chunked('RPUSH', KEYS[10], kept)
  redis.call('SADD', KEYS[11], KEYS[10])
end
if redis.call('SCARD', KEYS[9]) == 0 then
  redis.call('DEL', KEYS[9])
  redis.call('ZREM', KEYS[8], ARGV[3])
end
local result = {given}
for _, v in ipairs(kept) do result[#result + 1] = v end
return result
