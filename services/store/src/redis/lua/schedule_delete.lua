#!lua
-- ARGV: id. 1 when deleted.
local id = ARGV[1]
redis.call('ZREM', P .. 'schn', id)
redis.call('HDEL', P .. 'schv', id)
redis.call('DEL', P .. 'schr:' .. id)
return redis.call('HDEL', P .. 'sch', id)
