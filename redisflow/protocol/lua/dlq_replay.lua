-- Send dead letters back to their source, each exactly once whoever else replays them:
-- a letter is pushed only if this call deleted it (XDEL returns 1), in the same atomic step.
-- KEYS[1] dead-letter stream, KEYS[2] the source (list, sorted set or stream; for a channel
-- any key of the slot), KEYS[3] priority sequence, KEYS[4] wake stream (priority only).
-- ARGV[1] 'queue' | 'priority' | 'stream' | 'channel' | 'schannel' (sharded: SPUBLISH to
-- channels of this slot), then per letter three values:
-- entry id, item (list/sorted-set item, stream payload, or channel message), and its
-- priority level, its channel, or a stream entry's headers (JSON; '' for none).
-- Returns the number of letters replayed.
local kind = ARGV[1]
local want = ({queue = 'list', priority = 'zset', stream = 'stream'})[kind]
if want then
  local bad = check_type(KEYS[2], want)
  if bad then return bad end
end
local mine = {}
for i = 2, #ARGV, 3 do
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then
    mine[#mine + 1] = i
  end
end
if #mine == 0 then return 0 end
if kind == 'queue' then
  local items = {}
  for _, i in ipairs(mine) do items[#items + 1] = ARGV[i + 1] end
  call_chunked('RPUSH', KEYS[2], items)
elseif kind == 'priority' then
  local last = redis.call('INCRBY', KEYS[3], #mine)
  local args = {}
  for n, i in ipairs(mine) do
    local score = tonumber(ARGV[i + 2]) * SHIFT + last - #mine + n
    args[#args + 1] = string.format('%.0f', score)
    args[#args + 1] = ARGV[i + 1]
  end
  call_chunked('ZADD', KEYS[2], args)
  redis.call('XADD', KEYS[4], 'MAXLEN', '1', '*', 'n', #mine)
elseif kind == 'stream' then
  for _, i in ipairs(mine) do
    if ARGV[i + 2] == '' then
      redis.call('XADD', KEYS[2], '*', 'data', ARGV[i + 1])
    else
      redis.call('XADD', KEYS[2], '*', 'data', ARGV[i + 1], 'headers', ARGV[i + 2])
    end
  end
else
  local publish = kind == 'schannel' and 'SPUBLISH' or 'PUBLISH'
  for _, i in ipairs(mine) do redis.call(publish, ARGV[i + 2], ARGV[i + 1]) end
end
return #mine
