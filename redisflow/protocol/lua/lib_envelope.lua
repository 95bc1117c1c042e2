-- Reading the envelope of list and sorted-set items in Lua (protocol/envelope.py is the
-- Python side): prepended to the scripts that count the deliveries of a dead worker's items.
local function trusted(header)
  -- The rules of protocol/envelope.py valid_head: what redisflow itself writes.
  local ok, head = pcall(cjson.decode, header)
  if not ok or type(head) ~= 'table' or #head ~= 4 then return false end
  if type(head[1]) ~= 'string' or type(head[2]) ~= 'number' or type(head[3]) ~= 'number' then
    return false
  end
  if head[4] ~= cjson.null then
    if type(head[4]) ~= 'table' then return false end
    for _, v in pairs(head[4]) do
      if type(v) ~= 'string' then return false end
    end
  end
  return true
end

local function counted(item, now)
  -- The item with its attempt + 1, and that attempt. An item without a trusted envelope
  -- (written by another client) gets one, as protocol/envelope.py reads it: the id is
  -- codec's content_id (SHA-1 of the whole item), the payload what follows the header.
  local nl = string.find(item, '\n', 1, true)
  if string.byte(item, 1) == 30 and nl then
    local s, e, id, ms, n = string.find(item, '^\30%[("[^"\\]*"),(%d+),(%d+),')
    if s and #ms <= 15 and #n <= 9 and tonumber(n) >= 1 and trusted(string.sub(item, 2, nl - 1))
    then
      local attempt = tonumber(n) + 1
      return '\30[' .. id .. ',' .. ms .. ',' .. attempt .. ',' .. string.sub(item, e + 1), attempt
    end
  end
  local payload = item
  if string.byte(item, 1) == 30 and nl then payload = string.sub(item, nl + 1) end
  return '\30["' .. string.sub(redis.sha1hex(item), 1, 20) .. '",' .. now .. ',2,null]\n'
    .. payload, 2
end
