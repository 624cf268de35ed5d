#!lua
-- Cancels every unfinished node of a workflow at once: the head is marked
-- cancelling first, so a node that becomes ready meanwhile is cancelled
-- too (wf_ready), and no node starts after this returns. Leased nodes are
-- taken from their sessions, which are told on rev ("session id").
-- ARGV: workflow id, now (''=store clock), ev, rev. Returns {-1} for an
-- unknown workflow, else the nodes cancelled and the head's state.
local wid, now, ev = ARGV[1], clock(ARGV[2]), ARGV[3]
local wt = P .. 't:' .. wid
local h = redis.call('HMGET', wt, 'st', 'wp')
if not h[1] then return {-1} end
if h[1] ~= '9' then return {0, tonumber(h[1])} end
local wl = redis.call('GET', P .. 'wl:' .. wid) or ''
redis.call('HSET', wt, 'wq', 1)
for id in string.gmatch(wl, '%S+') do
  local t = P .. 't:' .. id
  local f = redis.call('HMGET', t, 'st', 'qk', 'ss')
  local live = true
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
    live = false
  end
  if live then
    redis.call('ZREM', P .. 'exp', id)
    finish(t, id, 7, now, ev)
  end
end
wf_flush(ev)
return {tonumber(h[2] or '0'), tonumber(redis.call('HGET', wt, 'st'))}
