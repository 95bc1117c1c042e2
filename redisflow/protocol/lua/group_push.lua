-- Add messages to one fair group of a queue, and offer the group to the ring.
-- KEYS[1..7] as lib_groups.lua, KEYS[8] the group's key (a push touches one group, declared
-- here), KEYS[9] the priority sequence, KEYS[10] a dedup key (optional).
-- ARGV[1] base, ARGV[2] mode, ARGV[3] group, ARGV[4] dedup window ms ('0': no dedup), then
-- the items (list), or priority/item pairs (zset).
-- Returns the number of items added, or false if the dedup key was seen in its window.
local dedup = ARGV[4] ~= '0'
if dedup and redis.call('EXISTS', KEYS[10]) == 1 then return false end
local bad = check_type(KEYS[8], ZSET and 'zset' or 'list')
  or check_type(RING, 'zset') or check_type(HELD, 'set') or check_type(WAKE, 'stream')
if bad then return bad end
local g = ARGV[3]
local items = {}
if ZSET then
  local count = (#ARGV - 4) / 2
  local last = redis.call('INCRBY', KEYS[9], count)
  for i = 1, count do
    local at = 5 + 2 * (i - 1)
    items[#items + 1] = string.format('%.0f', tonumber(ARGV[at]) * SHIFT + last - count + i)
    items[#items + 1] = ARGV[at + 1]
  end
else
  for i = 5, #ARGV do items[#items + 1] = ARGV[i] end
end
append(g, items)
if offer(g, 0) then wake(#items / STEP) end
if dedup then redis.call('SET', KEYS[10], '1', 'PX', ARGV[4]) end
return #items / STEP
