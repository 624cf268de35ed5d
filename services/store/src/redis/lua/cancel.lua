#!lua
-- ARGV: id, now (''=store clock), ev, rev. Returns 0 when cancelled, -1
-- not found, -2 a workflow's id, or the (uncancellable) state. A leased task is taken from its
-- session, which is told on rev ("session id"). A WAITING workflow node
-- is cancelled in place (its dependents follow, see wf_after).
local id, now, ev = ARGV[1], clock(ARGV[2]), ARGV[3]
local t = P .. 't:' .. id
local f = redis.call('HMGET', t, 'st', 'qk', 'ss')
if not f[1] then return -1 end
-- A workflow's head: CancelWorkflow cancels it.
if redis.call('HEXISTS', t, 'wnc') == 1 then return -2 end
if f[1] == '2' then
  unqueue(t, id, f[2])
elseif f[1] == '1' then
  redis.call('ZREM', P .. 'sched', id)
elseif f[1] == '3' or f[1] == '4' then
  redis.call('SREM', P .. 'sl:' .. f[3], id)
  redis.call('PUBLISH', ARGV[4], f[3] .. ' ' .. id)
elseif f[1] == '9' then
  redis.call('DEL', P .. 'wa:' .. id)
else
  return tonumber(f[1])
end
redis.call('ZREM', P .. 'exp', id)
finish(t, id, 7, now, ev)
wf_flush(ev)
return 0
