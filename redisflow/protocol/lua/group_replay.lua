-- Send dead letters of a queue consumed in fair groups back to their groups, each exactly
-- once whoever else replays them (as dlq_replay.lua: a letter is pushed only if this call
-- deleted it), and wake the consumers.
-- KEYS[1..7] as lib_groups.lua, KEYS[8] the dead-letter stream, KEYS[9] the priority
-- sequence.  ARGV[1] base, ARGV[2] mode, then per letter: entry id, item, priority level,
-- group ('' for the default group).
-- Returns the number of letters replayed.
local bad = check_type(SOURCE, ZSET and 'zset' or 'list')
if bad then return bad end
local mine = {}
for i = 3, #ARGV, 4 do
  if redis.call('XDEL', KEYS[8], ARGV[i]) == 1 then mine[#mine + 1] = i end
end
if #mine == 0 then return 0 end
local last = ZSET and redis.call('INCRBY', KEYS[9], #mine) or 0
local by_group, order = {}, {}
for n, i in ipairs(mine) do
  local g = ARGV[i + 3]
  local items = by_group[g]
  if not items then
    items = {}
    by_group[g] = items
    order[#order + 1] = g
  end
  if ZSET then
    items[#items + 1] = string.format('%.0f', tonumber(ARGV[i + 2]) * SHIFT + last - #mine + n)
  end
  items[#items + 1] = ARGV[i + 1]
end
local woken = 0
for _, g in ipairs(order) do
  append(g, by_group[g])
  if offer(g, 0) then woken = woken + 1 end
end
if woken > 0 then wake(woken) end
return #mine
