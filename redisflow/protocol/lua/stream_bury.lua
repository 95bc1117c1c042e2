-- Dead-letter a stream entry and ack it, both or neither.
-- KEYS[1] dead-letter stream, KEYS[2] the stream.  ARGV[1] group, ARGV[2] entry id,
-- ARGV[3] MAXLEN of the dead letters (approximate), ARGV[4..] field/value pairs.
local bad = check_type(KEYS[1], 'stream')
if bad then return bad end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
return redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
