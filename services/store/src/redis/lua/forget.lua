#!lua
-- ARGV: id, ev. 0 forgotten, -1 not found, else the unfinished state.
local id = ARGV[1]
local t = P .. 't:' .. id
local st = redis.call('HGET', t, 'st')
if not st then return -1 end
if st ~= '5' and st ~= '6' and st ~= '7' and st ~= '8' then return tonumber(st) end
notify(t, id, ARGV[2])
redis.call('DEL', t)
redis.call('ZREM', P .. 'dlq', id)
redis.call('ZREM', P .. 'dlx', id)
return 0
