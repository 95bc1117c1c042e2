-- Give a live worker's leased messages back to their queue, at the head, in order (at stop,
-- or batches whose fetch reply was lost; a dead worker's go through recover.lua).
-- KEYS[1] queue (list or sorted set), KEYS[2] leases, KEYS[3] the worker's batch set,
-- KEYS[4 .. 3+ARGV[3]] batches whose remaining messages are passed in ARGV (just drop them),
-- KEYS[4+ARGV[3] ..] batches to move back whole (unknown to the caller).
-- ARGV[1] 'list' or 'zset', ARGV[2] worker id, ARGV[3] number of batches to drop,
-- ARGV[4..] unfinished items: members for a list, score/member pairs for a sorted set.
-- Returns the number of messages moved back from whole batches.
local zset = ARGV[1] == 'zset'
local bad = check_type(KEYS[1], zset and 'zset' or 'list')
if bad then return bad end
local function give_back(items, from)
  if #items < from then return end
  if zset then
    local args = {}
    for i = from, #items, 2 do
      args[#args + 1] = items[i]
      args[#args + 1] = items[i + 1]
    end
    call_chunked('ZADD', KEYS[1], args)
  else
    local rev = {}
    for i = #items, from, -1 do rev[#rev + 1] = items[i] end
    call_chunked('LPUSH', KEYS[1], rev)
  end
end
local moved = 0
local drop = tonumber(ARGV[3])
for i = 4, #KEYS do
  if i >= 4 + drop then
    local items = redis.call('LRANGE', KEYS[i], 0, -1)
    give_back(items, 1)
    moved = moved + #items
  end
  redis.call('DEL', KEYS[i])
  redis.call('SREM', KEYS[3], KEYS[i])
end
give_back(ARGV, 4)
if redis.call('SCARD', KEYS[3]) == 0 then
  redis.call('DEL', KEYS[3])
  redis.call('ZREM', KEYS[2], ARGV[2])
end
if zset then moved = moved / 2 end
return moved
