-- Fair groups (features/groups.py, consumers/groups.py): what every group script shares.
-- KEYS[1..7] of every group script: the source (the default group's messages: a message
-- sent without a group, or by another client, is there), the ring (groups that may be
-- served, scored by their turn), the turn counter, the named groups that hold messages (a
-- set: a push adds the group, the fetch that empties it removes it), the parked groups
-- (waiting for their rate limit, scored by due time in ms), the paused groups, and the
-- wake stream (blocked consumers wait on it).
-- ARGV[1] the base of the per-group keys, ARGV[2] 'list' or 'zset'.
-- A group's own keys are built here from the base, which carries the source's hash tag, so
-- they share the source's slot whatever the group's name (docs/design.md, "Fair groups"):
-- <base>:g:<group> its messages, <base>:gi:<group> the lease tokens of its messages being
-- handled (with a concurrency limit), <base>:gr:<group> the times of its grants (with a
-- rate limit).
local SOURCE, RING, TURN, HELD, PARK, PAUSED, WAKE =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local BASE, ZSET = ARGV[1], ARGV[2] == 'zset'
local STEP = ZSET and 2 or 1  -- a zset's items come as score/member pairs

local function group_key(g)
  if g == '' then return SOURCE end
  return BASE .. ':g:' .. g
end
local function tokens_key(g) return BASE .. ':gi:' .. g end
local function grants_key(g) return BASE .. ':gr:' .. g end

local function waiting(g)
  if ZSET then return redis.call('ZCARD', group_key(g)) end
  return redis.call('LLEN', group_key(g))
end

-- Put group g at the end of the ring if it has messages and may be served: not paused, not
-- parked, and with fewer than `limit` messages being handled (0: no limit). Whether it was
-- added (a blocked consumer then needs waking).
local function offer(g, limit)
  if redis.call('ZSCORE', RING, g) then return false end
  if redis.call('SISMEMBER', PAUSED, g) == 1 or redis.call('ZSCORE', PARK, g) then
    return false
  end
  if limit > 0 and redis.call('SCARD', tokens_key(g)) >= limit then return false end
  if waiting(g) == 0 then
    if g ~= '' then redis.call('SREM', HELD, g) end  -- its last message was leased at a limit
    return false
  end
  redis.call('ZADD', RING, redis.call('INCR', TURN), g)
  return true
end

local function wake(n)
  redis.call('XADD', WAKE, 'MAXLEN', '1', '*', 'n', n)
end

-- Note that named group g holds messages (the default group's are its key's: another
-- client pushes there too).
local function holds(g)
  if g ~= '' then redis.call('SADD', HELD, g) end
end

-- Add items at the tail of group g: items of a list, or score/member pairs of a zset.
local function append(g, items)
  if #items == 0 then return end
  call_chunked(ZSET and 'ZADD' or 'RPUSH', group_key(g), items)
  holds(g)
end

-- Put items back at the head of group g, in their order: items of a list, or score/member
-- pairs of a zset (their scores are their places).
local function give_back(g, items)
  if #items == 0 then return end
  if ZSET then
    call_chunked('ZADD', group_key(g), items)
  else
    local rev = {}
    for i = #items, 1, -1 do rev[#rev + 1] = items[i] end
    call_chunked('LPUSH', group_key(g), rev)
  end
  holds(g)
end

-- Call f(group, index, score, item) for each message of a batch list (runs: a group, its
-- count, then its items or score/item pairs; the index counts the messages from 0).
local function each_leased(entries, f)
  local k, index = 1, 0
  while k <= #entries do
    local g, count = entries[k], tonumber(entries[k + 1])
    k = k + 2
    for _ = 1, count do
      if ZSET then
        f(g, index, entries[k], entries[k + 1])
      else
        f(g, index, nil, entries[k])
      end
      k = k + STEP
      index = index + 1
    end
  end
end

-- The group and the rest of a delayed member: '\29<length>:<group><rest>' for a named
-- group; anything else is the default group's (a plain delayed enqueue).
local function delayed_group(member)
  if string.byte(member, 1) ~= 29 then return '', member end
  local sep = string.find(member, ':', 2, true)
  local n = tonumber(string.sub(member, 2, sep - 1))
  return string.sub(member, sep + 1, sep + n), string.sub(member, sep + n + 1)
end
