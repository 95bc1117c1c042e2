-- Give a live worker's leased messages of a fair-group queue back to the head of their
-- groups (at stop, or batches whose fetch reply was lost), releasing their lease tokens.
-- KEYS[1..7] as lib_groups.lua, KEYS[8] leases, KEYS[9] the worker's batch set,
-- KEYS[10 .. 9+d] batches whose unfinished messages are passed in ARGV (just dropped),
-- KEYS[10+d ..] batches to give back whole (unknown to the caller; runs as group_fetch.lua
-- writes them).
-- ARGV[1] base, ARGV[2] mode, ARGV[3] worker id, ARGV[4] d, ARGV[5] concurrency limit
-- (0: none), ARGV[6] the number r of released messages, ARGV[7 .. 6+2r] their group/token
-- pairs, then the unfinished messages: group, token, item (list) or group, token, score,
-- item (zset).
-- Returns the number of messages given back from whole batches.
local limit, drop, released = tonumber(ARGV[5]), tonumber(ARGV[4]), tonumber(ARGV[6])
local bad = check_type(SOURCE, ZSET and 'zset' or 'list')
if bad then return bad end
local back, order = {}, {}
local function keep(g, score, item)
  local items = back[g]
  if not items then
    items = {}
    back[g] = items
    order[#order + 1] = g
  end
  if ZSET then items[#items + 1] = score end
  items[#items + 1] = item
end
local woken = 0
for i = 7, 6 + 2 * released, 2 do
  redis.call('SREM', tokens_key(ARGV[i]), ARGV[i + 1])
  if offer(ARGV[i], limit) then woken = woken + 1 end
end
local moved = 0
for i = 10, #KEYS do
  if i >= 10 + drop then
    each_leased(redis.call('LRANGE', KEYS[i], 0, -1), function(g, index, score, item)
      if limit > 0 then redis.call('SREM', tokens_key(g), KEYS[i] .. '#' .. index) end
      keep(g, score, item)
      moved = moved + 1
    end)
  end
  redis.call('DEL', KEYS[i])
  redis.call('SREM', KEYS[9], KEYS[i])
end
local width_argv = ZSET and 4 or 3
for i = 7 + 2 * released, #ARGV, width_argv do
  local g = ARGV[i]
  redis.call('SREM', tokens_key(g), ARGV[i + 1])
  keep(g, ARGV[i + 2], ARGV[i + width_argv - 1])
end
for _, g in ipairs(order) do
  give_back(g, back[g])
  if offer(g, limit) then woken = woken + 1 end
end
if woken > 0 then wake(woken) end
if redis.call('SCARD', KEYS[9]) == 0 then
  redis.call('DEL', KEYS[9])
  redis.call('ZREM', KEYS[8], ARGV[3])
end
return moved
