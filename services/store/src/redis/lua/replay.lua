#!lua
-- ARGV: id, now (''=store clock), ev, rdy. 0 replayed, -1 not found, -2 a
-- workflow node, else the state.
local id, now = ARGV[1], clock(ARGV[2])
local t = P .. 't:' .. id
local f = redis.call('HMGET', t, 'st', 'qk', 'wf')
if not f[1] then return -1 end
if f[1] ~= '6' then return tonumber(f[1]) end
-- A workflow node's dependents have settled on its failure already.
if f[3] then return -2 end
redis.call('HSET', t, 'st', 2, 'fl', 0, 'fa', 0, 'ua', now)
redis.call('PERSIST', t)
redis.call('ZREM', P .. 'dlq', id)
redis.call('ZREM', P .. 'dlx', id)
push(f[2], id, false)
notify(t, id, ARGV[3])
emit('Q', t, id, now, f[2])
redis.call('PUBLISH', ARGV[4], f[2])
return 0
