#!lua
-- ARGV: id. The task's hash fields (none: unknown), after marking it
-- watched: from now on its changes are published.
local t = P .. 't:' .. ARGV[1]
if redis.call('EXISTS', t) == 0 then return {} end
redis.call('HSET', t, 'w', 1)
return redis.call('HGETALL', t)
