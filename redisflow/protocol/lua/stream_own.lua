-- This consumer's own pending entries (what it held when it stopped, died or lost its
-- connection), taken again atomically: XCLAIM JUSTID resets their idle time so no peer's
-- XAUTOCLAIM takes them meanwhile, without counting a delivery (XREADGROUP with id 0 would
-- bump every entry's delivery count at each reconnect). After a restart (ARGV[5] = '1')
-- the delivery counts: the previous run may have started them.
-- KEYS[1] stream.  ARGV[1] group, ARGV[2] consumer, ARGV[3] start id ('-' or '(<id>'),
-- ARGV[4] count, ARGV[5] '1' to count this delivery.
-- Returns {{id, fields (false if the entry was trimmed), deliveries}...}, oldest first.
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], '+', ARGV[4], ARGV[2])
local out = {}
for _, p in ipairs(pending) do
  local id, count = p[1], p[4]
  local entry = redis.call('XRANGE', KEYS[1], id, id)
  local fields = false
  if #entry > 0 then
    fields = entry[1][2]
    if ARGV[5] == '1' then
      count = count + 1
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'RETRYCOUNT', count, 'JUSTID')
    else
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
    end
  end
  out[#out + 1] = {id, fields, count}
end
return out
