-- Housekeeping of a fair-group queue, run by each worker a few times a second (after
-- maintain.lua, which renews its lease): move due delayed messages (retries, delayed
-- sends) into their groups, put parked groups whose rate limit has room back in the ring,
-- and offer the default group (another client may have pushed to the source itself).
-- KEYS[1..7] as lib_groups.lua, KEYS[8] the delayed set, KEYS[9] the priority sequence.
-- ARGV[1] base, ARGV[2] mode, ARGV[3] max delayed messages to move, ARGV[4] concurrency
-- limit per group (0: none).
-- Delayed members are '\29<length>:<group><rest>' (a named group) or the rest alone (the
-- default group); the rest is an item (list) or '<priority>:<item>' (zset).
-- Returns the ms until the next delayed message or parked group is due, or -1.
local now = now_ms()
local limit = tonumber(ARGV[4])
local bad = check_type(SOURCE, ZSET and 'zset' or 'list')
local due = {}
if not bad then
  due = redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
end
local touched, order = {}, {}
if #due > 0 then
  redis.call('ZREM', KEYS[8], unpack(due))
  local last = ZSET and redis.call('INCRBY', KEYS[9], #due) or 0
  for i, member in ipairs(due) do
    local g, rest = delayed_group(member)
    local items = touched[g]
    if not items then
      items = {}
      touched[g] = items
      order[#order + 1] = g
    end
    if ZSET then
      local sep = string.find(rest, ':', 1, true)
      local score = tonumber(string.sub(rest, 1, sep - 1)) * SHIFT + last - #due + i
      items[#items + 1] = string.format('%.0f', score)
      items[#items + 1] = string.sub(rest, sep + 1)
    else
      items[#items + 1] = rest
    end
  end
end
for _, g in ipairs(order) do append(g, touched[g]) end
local parked = redis.call('ZRANGEBYSCORE', PARK, '-inf', now)
if #parked > 0 then redis.call('ZREM', PARK, unpack(parked)) end
local woken = 0
for _, g in ipairs(order) do if offer(g, limit) then woken = woken + 1 end end
for _, g in ipairs(parked) do if offer(g, limit) then woken = woken + 1 end end
if not bad and offer('', limit) then woken = woken + 1 end
if woken > 0 then wake(woken) end
local next_ = -1
for _, key in ipairs({KEYS[8], PARK}) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #first > 0 then
    local wait = math.max(0, tonumber(first[2]) - now)
    if next_ < 0 or wait < next_ then next_ = wait end
  end
end
return next_
